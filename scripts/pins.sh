# shellcheck shell=bash
# Versions of the PyPI-packaged tools that scripts/lint-template and scripts/sam-build install into
# their own venvs (.venv-lint/, .venv-sam/). One place to bump them; each script re-creates its venv
# when the pins it uses change.
CFN_LINT_VERSION="1.58.0"
SAM_CLI_VERSION="1.170.0"   # also brings aws-lambda-builders (its Rust builder: rust-cargolambda)
CARGO_LAMBDA_VERSION="1.9.2" # the `cargo lambda` subcommand, prebuilt (no crates.io build)
ZIGLANG_VERSION="0.17.0"     # zig, the cross-linker cargo-lambda uses for the arm64 target
LOCALSTACK_VERSION="2026.3.0"   # localstack-core[runtime], run in-process by scripts/emulators (its
                                # dependencies: scripts/localstack-constraints.txt)
