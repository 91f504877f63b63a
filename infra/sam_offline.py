"""Offline tools for infra/template.yaml: no AWS account, no credentials, no network.

    python3 infra/sam_offline.py check TEMPLATE ROUTES_JSON METRICS_RS OUT
        The template checks that cfn-lint and checkov cannot make (see validate.sh): the HttpApi events against
        the route table (`chainkeeper routes --json`), the build metadata and architecture, data safety, the
        alarms against the metrics contract (shared/src/metrics_names.rs), and the IAM rules; then the SAM
        transform, written to OUT as JSON.

    python3 infra/sam_offline.py packages BUILD_DIR ARCH          (with the SAM CLI's Python)
        After `sam build --build-dir BUILD_DIR`: for every function of the built template, the zip `sam deploy`
        uploads (made by SAM's own packaging code) has an executable `bootstrap` at its root, an ELF for ARCH,
        the template's architecture; prints each zip's size against the 8 MB target.

    python3 infra/sam_offline.py policies TEMPLATE --region R --account A --param K=V... --ref LOGICAL=VALUE...
        Each function's IAM policies, read from the *transformed* template and resolved for one deployment
        (parameters, pseudo parameters, `Ref` of the table and the signing-key secret): what the IAM test
        (tests/tests/e2e/aws_iam.rs) grants each function binary, as JSON
        {"<binary>": {"role": "<RoleLogicalId>", "policies": [{"name": ..., "document": {...}}]}}.
"""

import argparse
import copy
import json
import os
import re
import sys

from cfnlint.decode import cfn_yaml
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform as sam_transform

PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "chainkeeper",
    "AWS::StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/chainkeeper/x",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": [],
}

# The functions the template must deploy, and how each is invoked.
SCHEDULED = {"refresh", "recover"}


def load(path):
    """The template as plain dicts and lists, intrinsics in their long form (`{"Ref": ...}`)."""
    return json.loads(json.dumps(cfn_yaml.load(path)))


class OfflinePolicyLoader(ManagedPolicyLoader):
    """No managed policy is used (roles are explicit); if one were, fail loudly rather than reach IAM."""

    def __init__(self):
        pass

    def load(self):
        raise RuntimeError("a managed policy name was used; the template should not need IAM ListPolicies")


def transform(tpl, pseudo=PSEUDO):
    """The SAM transform, offline. `sam deploy` puts S3 locations in place of CodeUri folders after `sam build`;
    the translator only accepts S3 locations, so they are stood in."""
    os.environ.setdefault("AWS_DEFAULT_REGION", pseudo["AWS::Region"])  # the translator asks boto for one
    sam = copy.deepcopy(tpl)
    for fid, res in sam["Resources"].items():
        if res.get("Type") == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = f"s3://chainkeeper-artifacts/{fid}.zip"
    return sam_transform(sam, pseudo, OfflinePolicyLoader(), passthrough_metadata=True)


def functions_of(tpl):
    return {k: v for k, v in tpl.get("Resources", {}).items() if v.get("Type") == "AWS::Serverless::Function"}


def binary_of(res):
    return ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")


def as_list(x):
    return x if isinstance(x, list) else [x]


# ---- checks --------------------------------------------------------------------------------------------------


def check_routes(tpl, routes, errors):
    """Every row of the route table is an HttpApi event of the function that serves it, and nothing else is."""

    def to_apigw(path):
        # axum 0.8 `{*rest}` (catch-all) is API Gateway's greedy `{rest+}`; `{name}` stays `{name}`.
        return re.sub(r"\{\*(\w+)\}", r"{\1+}", path)

    wanted = {}
    for r in routes:
        key = (r["method"], to_apigw(r["path"]))
        if key in wanted:
            errors.append(f"route table: {r['method']} {r['path']} is listed twice")
        wanted[key] = r["function"]
    have = {}
    for fid, res in functions_of(tpl).items():
        binary = binary_of(res)
        for eid, ev in (res.get("Properties", {}).get("Events") or {}).items():
            props = ev.get("Properties") or {}
            if ev.get("Type") != "HttpApi":
                if isinstance(props, dict) and ("Path" in props or "Method" in props):
                    errors.append(f"{fid}.{eid}: event type {ev.get('Type')!r} has a Path/Method; HTTP API routes are Type: HttpApi")
                continue
            method, path = props.get("Method"), props.get("Path")
            if not isinstance(method, str) or not isinstance(path, str):
                errors.append(f"{fid}.{eid}: HttpApi event needs a literal Method and Path")
                continue
            key = (method.upper(), path)
            if key in have:
                errors.append(f"{fid}.{eid}: route {method} {path} is also served by {have[key][0]}")
            have[key] = (f"{fid}.{eid}", binary)
    for key, function in sorted(wanted.items()):
        if key not in have:
            errors.append(f"route {key[0]} {key[1]} (route table: function {function}) has no HttpApi event in the template")
        elif have[key][1] != function:
            errors.append(f"route {key[0]} {key[1]}: the route table says function {function}, the template wires it to {have[key][0]} ({have[key][1]})")
    for key, (where, _) in sorted(have.items()):
        if key not in wanted:
            errors.append(f"{where}: {key[0]} {key[1]} is not a row of the route table (`chainkeeper routes`)")
    return f"{len(wanted)} routes of the route table, each an HttpApi event of its function ({', '.join(sorted(set(wanted.values())))})"


def check_build(tpl, routes, errors):
    """One build path: `sam build` with cargo-lambda, one Architecture parameter for build and runtime."""
    params = tpl.get("Parameters", {})
    arch = params.get("Architecture", {})
    if arch.get("Default") != "x86_64" or sorted(arch.get("AllowedValues", [])) != ["arm64", "x86_64"]:
        errors.append("Parameter Architecture: Default must be x86_64 (what CI builds), AllowedValues [x86_64, arm64]")
    glob = (tpl.get("Globals") or {}).get("Function") or {}
    if glob.get("Architectures") != [{"Ref": "Architecture"}]:
        errors.append("Globals.Function.Architectures must be [!Ref Architecture] (sam build reads it too)")
    if glob.get("Runtime") != "provided.al2023" or glob.get("Handler") != "bootstrap":
        errors.append("Globals.Function: Runtime provided.al2023 and Handler bootstrap")
    needed = {r["function"] for r in routes} | SCHEDULED
    seen = set()
    for fid, res in functions_of(tpl).items():
        meta = res.get("Metadata") or {}
        binary = binary_of(res)
        code = res.get("Properties", {}).get("CodeUri")
        if meta.get("BuildMethod") != "rust-cargolambda" or not binary:
            errors.append(f"{fid}: Metadata needs BuildMethod: rust-cargolambda and BuildProperties.Binary")
            continue
        if code not in (f"../functions/{binary}/", f"../functions/{binary}"):
            errors.append(f"{fid}: CodeUri {code!r} must be the function's crate, ../functions/{binary}/")
        for key in ("Architectures", "Runtime", "Handler"):
            if key in res.get("Properties", {}):
                errors.append(f"{fid}: {key} is set per function; it must come from Globals (one Architecture parameter)")
        seen.add(binary)
    for missing in sorted(needed - seen):
        errors.append(f"no function builds binary {missing!r}")
    return f"{len(seen)} functions built by sam build (rust-cargolambda), architecture from the Architecture parameter"


def check_data_safety(tpl, errors):
    res = tpl.get("Resources", {})
    table = res.get("Table", {})
    props = table.get("Properties", {})
    if not props.get("DeletionProtectionEnabled"):
        errors.append("Table: DeletionProtectionEnabled must be true")
    if not (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled"):
        errors.append("Table: point-in-time recovery must be enabled")
    if table.get("DeletionPolicy") != "Retain" or table.get("UpdateReplacePolicy") != "Retain":
        errors.append("Table: DeletionPolicy and UpdateReplacePolicy must be Retain")
    window = tpl.get("Parameters", {}).get("KmsKeyDeletionWindowDays")
    if not window or window.get("MinValue") != 7 or window.get("MaxValue") != 30:
        errors.append("Parameter KmsKeyDeletionWindowDays (7-30, what KMS allows) is missing")
    glob_env = (((tpl.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables") or {}
    if glob_env.get("CHAINKEEPER_KMS_DELETION_WINDOW_DAYS") != {"Ref": "KmsKeyDeletionWindowDays"}:
        errors.append("Globals: CHAINKEEPER_KMS_DELETION_WINDOW_DAYS must be !Ref KmsKeyDeletionWindowDays")
    return "table: deletion protection, point-in-time recovery, retained; KMS deletion window a parameter"


def check_alarms(tpl, metrics_rs, errors):
    """Every alarm notifies the alarm topic; every chainkeeper metric an alarm reads is in the metrics contract."""
    src = open(metrics_rs, encoding="utf-8").read()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', src))
    namespace = consts.get("NAMESPACE")
    if not namespace:
        errors.append(f"{metrics_rs}: no NAMESPACE constant")
    names = set(consts.values())
    res = tpl.get("Resources", {})
    topics = [k for k, v in res.items() if v.get("Type") == "AWS::SNS::Topic"]
    subs = [v for v in res.values() if v.get("Type") == "AWS::SNS::Subscription"]
    if not any((s.get("Properties") or {}).get("Protocol") == "email" for s in subs):
        errors.append("no e-mail subscription to the alarm topic")
    alarms = {k: v for k, v in res.items() if v.get("Type") == "AWS::CloudWatch::Alarm"}
    for aid, alarm in alarms.items():
        p = alarm.get("Properties", {})
        if not any(a in ({"Ref": t} for t in topics) for a in p.get("AlarmActions", [])):
            errors.append(f"{aid}: AlarmActions must notify the alarm topic")
        metrics = [p] + [m.get("MetricStat", {}).get("Metric", {}) for m in p.get("Metrics", []) if "MetricStat" in m]
        for m in metrics:
            ns = m.get("Namespace")
            if ns == namespace and m.get("MetricName") not in names:
                errors.append(f"{aid}: metric {m.get('MetricName')!r} is not in the metrics contract ({metrics_rs})")
            if ns == namespace:
                for d in m.get("Dimensions", []):
                    if d.get("Name") not in names:
                        errors.append(f"{aid}: dimension {d.get('Name')!r} is not in the metrics contract")
    return f"{len(alarms)} alarms, each to the alarm topic, chainkeeper metrics from the contract ({namespace})"


def check_iam(out, errors):
    """No wildcard action; Resource "*" only for conditioned kms:CreateKey; data keys only with chainkeeper's
    encryption context. (checkov does not flag e.g. "secretsmanager:*" on a named resource.)"""

    def documents(res):
        props = res.get("Properties") or {}
        for pol in props.get("Policies") or []:
            if isinstance(pol, dict) and "PolicyDocument" in pol:
                yield pol.get("PolicyName", "?"), pol["PolicyDocument"]
        if "PolicyDocument" in props:
            yield "PolicyDocument", props["PolicyDocument"]

    roles = 0
    for rid, res in out["Resources"].items():
        if res.get("Type") not in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        roles += 1
        if (res.get("Properties") or {}).get("ManagedPolicyArns"):
            errors.append(f"{rid}: uses managed policies; keep every permission inline and named")
        for pname, doc in documents(res):
            for st in as_list(doc.get("Statement", [])):
                if st.get("Effect") != "Allow":
                    continue
                actions = as_list(st.get("Action", []))
                if "NotAction" in st or "NotResource" in st:
                    errors.append(f"{rid}/{pname}: NotAction/NotResource is not allowed")
                for a in actions:
                    if not isinstance(a, str) or "*" in a:
                        errors.append(f"{rid}/{pname}: wildcard or non-literal action {a!r}")
                if "*" in as_list(st.get("Resource", [])):
                    if actions != ["kms:CreateKey"]:
                        errors.append(f"{rid}/{pname}: Resource \"*\" for {actions} (only kms:CreateKey needs it)")
                    elif not st.get("Condition"):
                        errors.append(f"{rid}/{pname}: kms:CreateKey on Resource \"*\" without a Condition")
                if {"kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"} & set(actions):
                    cond = json.dumps(st.get("Condition", {}))
                    if "kms:EncryptionContextKeys" not in cond or "kms:EncryptionContext:org" not in cond:
                        errors.append(f"{rid}/{pname}: data-key use without kms:EncryptionContextKeys and kms:EncryptionContext:org conditions")
    return f"{roles} roles, no wildcard action, Resource \"*\" only for conditioned kms:CreateKey, data keys bound to chainkeeper's encryption context"


def cmd_check(args):
    tpl = load(args.template)
    routes = json.load(open(args.routes))
    ok = True
    for name, check in [
        ("routes", lambda e: check_routes(tpl, routes, e)),
        ("build", lambda e: check_build(tpl, routes, e)),
        ("data safety", lambda e: check_data_safety(tpl, e)),
        ("alarms", lambda e: check_alarms(tpl, args.metrics, e)),
    ]:
        errors = []
        summary = check(errors)
        if errors:
            ok = False
            print(f"{name} check:\n" + "\n".join("  - " + e for e in errors))
        else:
            print(f"ok: {summary}")
    try:
        out = transform(tpl)
    except Exception as e:  # InvalidDocumentException carries the list of causes
        print(f"SAM transform failed: {e}")
        for c in getattr(e, "causes", None) or []:
            print(f"  - {getattr(c, 'message', c)}")
        return 1
    json.dump(out, open(args.out, "w"), indent=1)
    types = {}
    for r in out["Resources"].values():
        types[r["Type"]] = types.get(r["Type"], 0) + 1
    print("ok: SAM transform -> " + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    errors = []
    summary = check_iam(out, errors)
    if errors:
        ok = False
        print("IAM check:\n" + "\n".join("  - " + e for e in errors))
    else:
        print(f"ok: IAM: {summary}")
    return 0 if ok else 1


# ---- policies for one deployment ------------------------------------------------------------------------------


class Resolver:
    """Resolves the intrinsics that IAM policies use (Ref, Fn::Sub, Fn::GetAtt, Fn::Join) for one deployment."""

    def __init__(self, out, params, pseudo, refs):
        self.out, self.params, self.pseudo, self.refs = out, params, pseudo, refs

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"no value for Ref {name} (pass --param or --ref)")

    def getatt(self, logical, attr):
        res = self.out["Resources"].get(logical) or {}
        region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
        if res.get("Type") == "AWS::DynamoDB::Table" and attr == "Arn":
            return f"arn:aws:dynamodb:{region}:{account}:table/{self.ref(logical)}"
        if res.get("Type") == "AWS::SQS::Queue" and attr == "Arn":
            name = self.value(res["Properties"]["QueueName"])
            return f"arn:aws:sqs:{region}:{account}:{name}"
        if res.get("Type") == "AWS::Logs::LogGroup" and attr == "Arn":
            name = self.value(res["Properties"]["LogGroupName"])
            return f"arn:aws:logs:{region}:{account}:log-group:{name}:*"
        raise KeyError(f"no value for GetAtt {logical}.{attr}")

    def sub(self, text, extra):
        def one(m):
            name = m.group(1)
            if name in extra:
                return str(self.value(extra[name]))
            if "." in name:
                return str(self.getatt(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::Sub":
                return self.sub(a, {}) if isinstance(a, str) else self.sub(a[0], a[1])
            if k == "Fn::GetAtt":
                logical, attr = a if isinstance(a, list) else a.split(".", 1)
                return self.getatt(logical, attr)
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self.value(a[1]))
            if k.startswith("Fn::"):
                raise KeyError(f"intrinsic {k} is not supported in policies")
        return {k: self.value(x) for k, x in v.items()}


def cmd_policies(args):
    tpl = load(args.template)
    pseudo = dict(PSEUDO, **{"AWS::Region": args.region, "AWS::AccountId": args.account})
    out = transform(tpl, pseudo)
    params = {k: v.get("Default") for k, v in tpl.get("Parameters", {}).items()}
    params.update(dict(kv.split("=", 1) for kv in args.param))
    refs = dict(kv.split("=", 1) for kv in args.ref)
    resolver = Resolver(out, params, pseudo, refs)
    result = {}
    for fid, res in functions_of(tpl).items():
        role = (res["Properties"].get("Role") or {}).get("Fn::GetAtt")
        role = role[0] if isinstance(role, list) else str(role).split(".")[0]
        policies = out["Resources"][role]["Properties"].get("Policies", [])
        result[binary_of(res)] = {
            "role": role,
            "policies": [{"name": p["PolicyName"], "document": resolver.value(p["PolicyDocument"])} for p in policies],
        }
    json.dump(result, sys.stdout, indent=1)
    return 0


# ---- packages after `sam build` ------------------------------------------------------------------------------

ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64


def cmd_packages(args):
    import zipfile

    from samcli.lib.package.utils import make_zip_with_lambda_permissions, zip_folder

    import yaml

    # The built template can only be deployed for the architecture it was built for: its Architecture parameter
    # is pinned (Default and the only AllowedValue), so `sam deploy` of a build cannot run x86_64 binaries on
    # arm64 Lambdas or the reverse. (SAM writes the built template in long-form intrinsics: plain YAML.)
    built_path = os.path.join(args.build_dir, "template.yaml")
    built = yaml.safe_load(open(built_path))
    glob = (built.get("Globals") or {}).get("Function") or {}
    if glob.get("Architectures") != [{"Ref": "Architecture"}] or "Architecture" not in built.get("Parameters", {}):
        print("FAILED: the built template no longer takes its architecture from the Architecture parameter")
        return 1
    built["Parameters"]["Architecture"].update(Default=args.arch, AllowedValues=[args.arch])
    with open(built_path, "w") as f:
        yaml.safe_dump(built, f, sort_keys=False, width=120)
    if any("Architectures" in (res.get("Properties") or {}) for res in functions_of(built).values()):
        print("FAILED: a function sets its own Architectures")
        return 1
    failed = False
    for fid, res in sorted(functions_of(built).items()):
        code = os.path.join(args.build_dir, res["Properties"]["CodeUri"])
        with zip_folder(code, make_zip_with_lambda_permissions) as (zip_path, _):
            size = os.path.getsize(zip_path)
            with zipfile.ZipFile(zip_path) as z:
                names = z.namelist()
                info = z.getinfo("bootstrap") if "bootstrap" in names else None
                head = z.read("bootstrap")[:20] if info else b""
        problems = []
        if not info:
            problems.append(f"no bootstrap at the zip's root (it holds {names})")
        else:
            if not (info.external_attr >> 16) & 0o111:
                problems.append("bootstrap is not executable in the zip")
            machine = int.from_bytes(head[18:20], "little") if len(head) >= 20 else None
            if head[:4] != b"\x7fELF":
                problems.append("bootstrap is not an ELF executable")
            elif machine != ELF_MACHINE[args.arch]:
                problems.append(f"bootstrap is built for ELF machine {machine}, the template says {args.arch} ({ELF_MACHINE[args.arch]})")
        note = "within the 8 MB target" if size <= 8_000_000 else "OVER the 8 MB target"
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{fid:<18} {res['Properties']['CodeUri']:<18} {size / 1e6:5.2f} MB zipped ({note})  {status}")
        failed |= bool(problems)
    print(f"{built_path}: Architecture pinned to {args.arch}" if not failed else "FAILED: packages do not match the template")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("template")
    c.add_argument("routes")
    c.add_argument("metrics")
    c.add_argument("out")
    k = sub.add_parser("packages")
    k.add_argument("build_dir")
    k.add_argument("arch", choices=sorted(ELF_MACHINE))
    p = sub.add_parser("policies")
    p.add_argument("template")
    p.add_argument("--region", default=PSEUDO["AWS::Region"])
    p.add_argument("--account", default=PSEUDO["AWS::AccountId"])
    p.add_argument("--param", action="append", default=[], help="PARAMETER=VALUE")
    p.add_argument("--ref", action="append", default=[], help="LOGICAL_ID=VALUE (the resource's Ref)")
    args = parser.parse_args()
    return {"check": cmd_check, "packages": cmd_packages, "policies": cmd_policies}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
