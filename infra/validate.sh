#!/usr/bin/env bash
# Offline validation of infra/template.yaml. Needs no AWS credentials and no network.
#
#   1. every route of shared/src/api/routes.rs is an HttpApi event of the function that serves it
#      (and no event is a route the code does not have) - cfn-lint cannot know this;
#   2. the SAM transform (aws-sam-translator) turns the template into plain CloudFormation;
#   3. cfn-lint: no errors on the SAM template nor on the transformed output (warnings are printed);
#   4. checkov: no failed check on the SAM template nor on the transformed output (skips are in the
#      template, each with its reason, under the resource's Metadata.checkov.skip).
#
# Run from the repository root:  bash infra/validate.sh
# Needs (CI installs them beforehand):  pip install aws-sam-translator cfn-lint checkov
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
TEMPLATE="${1:-infra/template.yaml}"   # a copy to check may be given (tests of this script)
ROUTES="shared/src/api/routes.rs"
PYTHON="${PYTHON:-python3}"

fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }

# ---- tools -------------------------------------------------------------------------------------
missing=()
"$PYTHON" -c 'import samtranslator' 2>/dev/null || missing+=("aws-sam-translator (python module samtranslator)")
"$PYTHON" -c 'import cfnlint' 2>/dev/null || missing+=("cfn-lint (python module cfnlint)")
command -v cfn-lint >/dev/null 2>&1 || missing+=("cfn-lint (command on PATH)")
command -v checkov >/dev/null 2>&1 || missing+=("checkov (command on PATH)")
if ((${#missing[@]})); then
  printf 'missing: %s\n' "${missing[@]}" >&2
  fail "install the validation tools first:  pip install aws-sam-translator cfn-lint checkov"
fi
[[ -f $TEMPLATE ]] || fail "$TEMPLATE not found (run from the repository root)"
[[ -f $ROUTES ]] || fail "$ROUTES not found (run from the repository root)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chainkeeper-infra.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TRANSFORMED="$WORK/template.transformed.json"

# No AWS account is touched: fixed pseudo-parameters, and no credentials so nothing can sign a call.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-eu-west-1}" AWS_REGION="${AWS_REGION:-eu-west-1}"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

# ---- 1 + 2: routes and SAM transform -----------------------------------------------------------
step "routes of $ROUTES vs HttpApi events, and SAM transform"
"$PYTHON" - "$TEMPLATE" "$ROUTES" "$TRANSFORMED" <<'PY' || fail "route check, SAM transform or IAM check (see above)"
import copy, json, re, sys

from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader

template_path, routes_path, out_path = sys.argv[1:4]
errors = []

# -- routes.rs -------------------------------------------------------------------------------
src = open(routes_path, encoding="utf-8").read()
consts = dict(re.findall(r'const\s+(\w+)\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]*)"\s*;', src))

def path_of(lit, ident, where):
    if lit is not None:
        return lit
    if ident in consts:
        return consts[ident]
    errors.append(f"routes.rs: {where}: path {ident!r} is neither a string literal nor a known const")
    return None

routes = []  # (method, axum path, function)
# r!("METHOD", path, "resource", "function", "summary")
for m in re.finditer(r'\br!\(\s*"([A-Z]+)"\s*,\s*(?:"([^"]*)"|([A-Za-z_]\w*))\s*,\s*"[^"]*"\s*,\s*"([^"]*)"', src):
    p = path_of(m.group(2), m.group(3), m.group(0)[:60])
    if p is not None:
        routes.append((m.group(1), p, m.group(4)))
# RouteSpec { method: "GET", path: "/x", ..., function: "manage" }
for m in re.finditer(r'RouteSpec\s*\{([^{}]*)\}', src):
    body = m.group(1)
    mm = re.search(r'\bmethod\s*:\s*"([A-Z]+)"', body)
    if not mm:
        continue  # the struct definition and the macro body, not a route
    pm = re.search(r'\bpath\s*:\s*(?:"([^"]*)"|([A-Za-z_]\w*))', body)
    fm = re.search(r'\bfunction\s*:\s*"([^"]*)"', body)
    if not pm or not fm:
        errors.append(f"routes.rs: cannot read path/function of: RouteSpec {{{body[:80]}…")
        continue
    p = path_of(pm.group(1), pm.group(2), body[:60])
    if p is not None:
        routes.append((mm.group(1), p, fm.group(1)))

# Guard against a route written in a form this parser does not know: count route-like entries.
expected = len(re.findall(r'\br!\(\s*"', src)) + len(re.findall(r'RouteSpec\s*\{\s*method\s*:\s*"', src))
if not routes:
    errors.append("routes.rs: no routes found: the parser no longer matches the file")
elif len(routes) != expected:
    errors.append(f"routes.rs: parsed {len(routes)} routes but counted {expected} route entries: update the parser in infra/validate.sh")

def to_apigw(path):
    # axum 0.8 `{*rest}` (catch-all) is API Gateway's greedy `{rest+}`; `{name}` stays `{name}`.
    return re.sub(r'\{\*(\w+)\}', r'{\1+}', path)

wanted = {}
for method, path, function in routes:
    key = (method, to_apigw(path))
    if key in wanted:
        errors.append(f"routes.rs: duplicate route {method} {path}")
    wanted[key] = function

# -- template --------------------------------------------------------------------------------
tpl = json.loads(json.dumps(cfn_yaml.load(template_path)))  # plain dict/list/str, long-form intrinsics
resources = tpl.get("Resources", {})
functions = {k: v for k, v in resources.items() if v.get("Type") == "AWS::Serverless::Function"}

def binary_of(logical_id, res):
    code = res.get("Properties", {}).get("CodeUri")
    m = re.fullmatch(r'\.\./target/lambda/([A-Za-z0-9_-]+)/?', code) if isinstance(code, str) else None
    if not m:
        errors.append(f"{logical_id}: CodeUri {code!r} is not ../target/lambda/<binary>/ (cargo lambda build output)")
        return None
    return m.group(1)

have = {}
for fid, res in functions.items():
    binary = binary_of(fid, res)
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
        errors.append(f"route {key[0]} {key[1]} (routes.rs, function {function}) has no HttpApi event in the template")
    elif have[key][1] != function:
        errors.append(f"route {key[0]} {key[1]}: routes.rs says function {function}, the template wires it to {have[key][0]} ({have[key][1]})")
for key, (where, _) in sorted(have.items()):
    if key not in wanted:
        errors.append(f"{where}: {key[0]} {key[1]} is not a route of routes.rs")

if errors:
    print("route check:\n" + "\n".join("  - " + e for e in errors))
else:
    print(f"ok: {len(wanted)} routes of routes.rs, each wired to its function ({', '.join(sorted({f for f in wanted.values()}))})")
route_errors, errors = errors, []

# -- SAM transform, offline ------------------------------------------------------------------
# `sam deploy` uploads CodeUri folders and puts S3 locations in their place; the translator only
# accepts S3 locations, so stand them in. No managed policy is used (roles are explicit), so the
# policy loader is never asked; it would fail loudly rather than reach IAM.
class OfflinePolicyLoader(ManagedPolicyLoader):
    def __init__(self):
        pass
    def load(self):
        raise RuntimeError("a managed policy name was used; the template should not need IAM ListPolicies")

sam = copy.deepcopy(tpl)
for fid, res in sam["Resources"].items():
    if res.get("Type") == "AWS::Serverless::Function":
        res["Properties"]["CodeUri"] = f"s3://chainkeeper-artifacts/{fid}.zip"

params = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
          "AWS::StackName": "chainkeeper", "AWS::StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/chainkeeper/x",
          "AWS::URLSuffix": "amazonaws.com", "AWS::NotificationARNs": []}
try:
    out = transform(sam, params, OfflinePolicyLoader(), passthrough_metadata=True)
except Exception as e:  # InvalidDocumentException carries the list of causes
    causes = getattr(e, "causes", None) or []
    print(f"SAM transform failed: {e}")
    for c in causes:
        print(f"  - {getattr(c, 'message', c)}")
    sys.exit(1)
json.dump(out, open(out_path, "w"), indent=1)
types = {}
for r in out["Resources"].values():
    types[r["Type"]] = types.get(r["Type"], 0) + 1
print("ok: SAM transform -> " + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))

# -- IAM: no wildcard actions; Resource "*" only for kms:CreateKey, and only with a Condition ----
# (checkov does not flag e.g. "secretsmanager:*" on a named resource.)
def as_list(x):
    return x if isinstance(x, list) else [x]
def documents(res):
    props = res.get("Properties") or {}
    for pol in props.get("Policies") or []:
        if isinstance(pol, dict) and "PolicyDocument" in pol:
            yield pol.get("PolicyName", "?"), pol["PolicyDocument"]
    if "PolicyDocument" in props:
        yield "PolicyDocument", props["PolicyDocument"]
iam = []
roles = 0
for rid, res in out["Resources"].items():
    if res.get("Type") not in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        continue
    roles += 1
    if (res.get("Properties") or {}).get("ManagedPolicyArns"):
        iam.append(f"{rid}: uses managed policies {res['Properties']['ManagedPolicyArns']}; keep every permission inline and named")
    for pname, doc in documents(res):
        for st in as_list(doc.get("Statement", [])):
            if st.get("Effect") != "Allow":
                continue
            actions = as_list(st.get("Action", []))
            if "NotAction" in st or "NotResource" in st:
                iam.append(f"{rid}/{pname}: NotAction/NotResource is not allowed")
            for a in actions:
                if not isinstance(a, str) or "*" in a:
                    iam.append(f"{rid}/{pname}: wildcard or non-literal action {a!r}")
            if "*" in as_list(st.get("Resource", [])):
                if actions != ["kms:CreateKey"]:
                    iam.append(f"{rid}/{pname}: Resource \"*\" for {actions} (only kms:CreateKey needs it)")
                elif not st.get("Condition"):
                    iam.append(f"{rid}/{pname}: kms:CreateKey on Resource \"*\" without a Condition")
if iam:
    print("IAM check:\n" + "\n".join("  - " + e for e in iam))
else:
    print(f"ok: IAM: {roles} roles/policies, no wildcard action, Resource \"*\" only for conditioned kms:CreateKey")
if route_errors or iam:
    sys.exit(1)
PY

# ---- 3: cfn-lint --------------------------------------------------------------------------------
# Exit status is a bit mask: 2 = error, 4 = warning, 8 = informational; anything else is a crash.
lint() {
  local label=$1 file=$2 out rc
  out="$(cfn-lint --format parseable -- "$file" 2>&1)"; rc=$?
  [[ -n $out ]] && printf '%s\n' "$out"
  if (( rc & 2 )) || (( rc & 1 )) || (( rc > 15 )); then
    fail "cfn-lint reported errors on $label (exit $rc)"
  fi
  if (( rc & 4 )); then echo "ok: cfn-lint $label: no errors (warnings above)"; else echo "ok: cfn-lint $label: no errors, no warnings"; fi
}
step "cfn-lint"
lint "the SAM template" "$TEMPLATE"
lint "the transformed template" "$TRANSFORMED"

# ---- 4: checkov ---------------------------------------------------------------------------------
# Offline: no platform key, no download of guideline mappings, no version check.
export BC_SKIP_MAPPING=TRUE CHECKOV_SKIP_VERSION_CHECK=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=FALSE
scan() {
  local label=$1 file=$2 json="$WORK/checkov-$3.json" rc
  checkov -f "$file" --framework cloudformation --skip-download --output json >"$json" 2>"$WORK/checkov-$3.err"; rc=$?
  "$PYTHON" - "$json" "$label" <<'PY'
import json, sys
path, label = sys.argv[1:3]
try:
    data = json.load(open(path))
except ValueError:
    print(f"  checkov gave no JSON for {label}"); sys.exit(1)
reports = data if isinstance(data, list) else [data]
failed, skipped, passed = [], [], 0
for r in reports:
    res = r.get("results", {})
    failed += res.get("failed_checks", [])
    skipped += res.get("skipped_checks", [])
    passed += r.get("summary", {}).get("passed", 0)
for c in failed:
    lines = c.get("file_line_range") or ["?", "?"]
    print(f"  FAILED {c['check_id']} {c['resource']} (lines {lines[0]}-{lines[1]}): {c['check_name']}")
by_id = {}
for c in skipped:
    by_id.setdefault(c["check_id"], []).append(c["resource"].split(".")[-1])
for cid, res in sorted(by_id.items()):
    print(f"  skipped {cid} ({len(res)}): {', '.join(sorted(res))}")
print(f"  passed {passed}, failed {len(failed)}, skipped {len(skipped)}")
sys.exit(1 if failed or not reports else 0)
PY
  local prc=$?
  if [[ $prc -ne 0 || $rc -ne 0 ]]; then
    sed 's/^/  checkov: /' "$WORK/checkov-$3.err" | tail -20 >&2
    fail "checkov on $label (exit $rc): fix the failed checks, or skip one in the template's Metadata.checkov.skip with its reason"
  fi
  echo "ok: checkov $label: no failed checks"
}
step "checkov"
scan "the SAM template" "$TEMPLATE" sam
scan "the transformed template" "$TRANSFORMED" cfn

printf '\nALL OK: %s is valid (routes, SAM transform, cfn-lint, checkov)\n' "$TEMPLATE"
