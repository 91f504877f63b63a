#!/usr/bin/env bash
# Offline validation of infra/template.yaml. Needs no AWS credentials and no network.
#
#   1. what cfn-lint and checkov cannot know (infra/sam_offline.py check): every row of the route table
#      (`chainkeeper routes --json`) is an HttpApi event of the function that serves it and no event is
#      anything else; every function is built by `sam build` (rust-cargolambda) from its crate, for the one
#      Architecture parameter; the table keeps deletion protection and point-in-time recovery; every alarm
#      notifies the alarm topic and reads only metrics of the contract (shared/src/metrics_names.rs); no IAM
#      statement has a wildcard action, Resource "*" (but conditioned kms:CreateKey), or data-key use
#      without chainkeeper's encryption context;
#   2. the SAM transform (aws-sam-translator) turns the template into plain CloudFormation;
#   3. cfn-lint: no errors on the SAM template nor on the transformed output (warnings are printed);
#   4. checkov: no failed check on the SAM template nor on the transformed output (skips are in the
#      template, each with its reason, under the resource's Metadata.checkov.skip).
#
# Run from the repository root:  bash infra/validate.sh
# Needs (CI installs them beforehand):  pip install aws-sam-translator cfn-lint checkov
# and the CLI built (`cargo build -p chainkeeper-cli`; CHAINKEEPER_BIN names another binary).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
TEMPLATE="${1:-infra/template.yaml}"   # a copy to check may be given (tests of this script)
METRICS="shared/src/metrics_names.rs"
CLI="${CHAINKEEPER_BIN:-target/debug/chainkeeper}"
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
[[ -f $METRICS ]] || fail "$METRICS not found (run from the repository root)"
[[ -x $CLI ]] || fail "$CLI not found: build the CLI first (cargo build -p chainkeeper-cli), or set CHAINKEEPER_BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chainkeeper-infra.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TRANSFORMED="$WORK/template.transformed.json"

# No AWS account is touched: fixed pseudo-parameters, and no credentials so nothing can sign a call.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-eu-west-1}" AWS_REGION="${AWS_REGION:-eu-west-1}"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

# ---- 1 + 2: routes, build, data safety, alarms, SAM transform, IAM -----------------------------------
# The route table comes from the code itself (`chainkeeper routes --json` prints every row of ROUTES), so the
# check needs the CLI built; CI runs this script after `cargo build`.
step "template checks (routes, build, data safety, alarms, IAM) and SAM transform"
"$CLI" routes --json >"$WORK/routes.json" || fail "$CLI routes --json failed"
"$PYTHON" infra/sam_offline.py check "$TEMPLATE" "$WORK/routes.json" "$METRICS" "$TRANSFORMED" \
  || fail "template checks or SAM transform (see above)"

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

printf '\nALL OK: %s is valid (routes, build, data safety, alarms, IAM, SAM transform, cfn-lint, checkov)\n' "$TEMPLATE"
