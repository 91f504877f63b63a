#!/usr/bin/env bash
# Builds the five Lambda functions the way a deployer does, `sam build`, and checks what `sam deploy` would upload.
#
#   bash infra/build.sh [x86_64|arm64]      # default x86_64, the template's default
#
# `sam build` reads infra/template.yaml: every function has `Metadata: BuildMethod: rust-cargolambda` and its
# crate as CodeUri, so SAM runs `cargo lambda build --release [--arm64] --bin <function>` in each crate, for the
# template's Architecture parameter (passed here as a parameter override, so build and template cannot differ).
# CargoLambda.toml at the repository root adds `--features aws` and the size-optimised release settings
# (opt-level s, fat LTO, one codegen unit, panic = abort, stripped). The five builds share one target directory,
# so the dependencies are compiled once. SAM then copies each `bootstrap` to target/sam/<arch>/<LogicalId>/ and
# writes target/sam/<arch>/template.yaml, which `sam deploy --template-file` takes.
#
# Time: SAM builds the functions one after another, so their five fat-LTO links (the longest step) would run one
# at a time. This script first runs the same `cargo lambda build` with several crates per cargo invocation, so
# their links share the cores; SAM's five builds then find everything fresh (about a second each) and only
# package. A crate's build is only fresh for SAM if cargo resolved the same features for it as when it is built
# alone, so the crates are grouped by identical features: the HTTP functions (lambda_http) and the scheduled ones
# (lambda_runtime with its default features). The scheduled crates also ask for bytes' `serde` feature, which the
# HTTP functions get through aws_lambda_events, so both groups share every compiled dependency below them; only
# lambda_runtime and the function crates differ. One invocation for all five would unify lambda_runtime's features
# into a variant that SAM's per-function builds of the HTTP functions do not resolve, and SAM
# would then rebuild. If SAM still compiles anything, this script says so (the packages are right either way).
#
# Then, for every function of the built template, the package `sam deploy` would make (SAM's own zip code) must
# have an executable `bootstrap` at its root that is an ELF of the template's architecture (infra/sam_offline.py
# packages); sizes are printed against the 8 MB target.
#
# Needs: the SAM CLI (`pip install aws-sam-cli`, best in its own virtualenv: it pins boto3), cargo-lambda
# (`pip install cargo-lambda`, brings zig), and for arm64 the Rust target (`rustup target add
# aarch64-unknown-linux-gnu`). SAM=/path/to/sam picks a SAM CLI that is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-x86_64}"
case $arch in
    x86_64) ;;
    arm64)
        if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
            echo "arm64 needs the Rust target: rustup target add aarch64-unknown-linux-gnu" >&2
            exit 1
        fi
        ;;
    *) echo "usage: bash infra/build.sh [x86_64|arm64]" >&2; exit 2 ;;
esac
sam="${SAM:-sam}"
command -v "$sam" >/dev/null 2>&1 || { echo "the SAM CLI is missing: pip install aws-sam-cli (or set SAM)" >&2; exit 1; }
command -v cargo-lambda >/dev/null 2>&1 || { echo "cargo-lambda is missing: pip install cargo-lambda" >&2; exit 1; }
# The Python that runs the SAM CLI (it has SAM's packaging code and the template tools).
sam_python="$(head -1 "$(command -v "$sam")" | sed -n 's/^#!//p')"
[ -x "$sam_python" ] || sam_python=python3

build_dir="target/sam/$arch"
flag=(); [ "$arch" = arm64 ] && flag=(--arm64)
for group in "chainkeeper-callback chainkeeper-query chainkeeper-manage" "chainkeeper-refresh chainkeeper-recover"; do
    packages=(); for p in $group; do packages+=(-p "$p"); done
    echo "== cargo lambda build --release ${flag[*]} $group (settings from CargoLambda.toml)"
    cargo lambda build --release "${flag[@]}" "${packages[@]}"
done
# No AWS account is needed to build; no telemetry, no region look-up.
export SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-eu-west-1}"
echo "== sam build (Architecture=$arch) -> $build_dir"
# AlarmEmail has no default (a deployment must name one); building does not use it.
log="$(mktemp)"; trap 'rm -f "$log"' EXIT
"$sam" build --template-file infra/template.yaml --build-dir "$build_dir" \
    --parameter-overrides "Architecture=$arch" "AlarmEmail=build@example.invalid" 2>&1 | tee "$log"
if grep -q '^ *Compiling ' "$log"; then
    echo "note: sam build compiled crates the build above had not (its feature groups no longer match SAM's" \
         "per-function builds): the packages are right, the build just took longer" >&2
fi
echo "== packages (and the built template pinned to Architecture=$arch)"
"$sam_python" infra/sam_offline.py packages "$build_dir" "$arch"
