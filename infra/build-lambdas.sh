#!/usr/bin/env bash
# Builds the five Lambda artifacts the SAM template deploys: the `lambda` profile (release, size-optimised, fat LTO,
# stripped, panic = abort: see Cargo.toml), the `aws` feature
# (DynamoDB, KMS, Secrets Manager), one `target/lambda/<function>/bootstrap.zip` each for x86_64, and for arm64
# under `target/lambda-arm64/` where that Rust target is installed. Prints each zip's size against the 8 MB target.
#
#   pip install cargo-lambda        # brings zig, which links against Amazon Linux 2023's glibc
#   bash infra/build-lambdas.sh
set -euo pipefail
cd "$(dirname "$0")/.."

functions=(callback query manage refresh recover)
packages=() features=()
for f in "${functions[@]}"; do
    packages+=(-p "chainkeeper-$f")
    features+=("chainkeeper-$f/aws")
done
features=$(IFS=,; echo "${features[*]}")

arches=(x86_64)
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    arches+=(arm64)
else
    echo "arm64: the aarch64-unknown-linux-gnu Rust target is not installed here; building x86_64 only"
fi

for arch in "${arches[@]}"; do
    case $arch in
        x86_64) flag=--x86-64 dir=target/lambda ;;
        arm64) flag=--arm64 dir=target/lambda-arm64 ;;
    esac
    echo "== cargo lambda build --profile lambda $flag (${functions[*]})"
    cargo lambda build --profile lambda --locked "$flag" "${packages[@]}" --features "$features" \
        --output-format zip --lambda-dir "$dir"
    over=0
    for f in "${functions[@]}"; do
        zip="$dir/$f/bootstrap.zip"
        bytes=$(stat -c %s "$zip")
        mb=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1000000 }')
        note="within the 8 MB target"
        if [ "$bytes" -gt 8000000 ]; then note="OVER the 8 MB target"; over=1; fi
        printf '%-6s %-8s %s MB  (%s)\n' "$arch" "$f" "$mb" "$note"
    done
    [ "$over" -eq 0 ] || echo "warning: some $arch artifacts are over 8 MB"
done
