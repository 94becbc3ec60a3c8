#!/usr/bin/env bash
# Builds the binary the container image ships, and prints its path as the last line:
# `cargo build --release` for the host's target with glibc linked statically
# (`-C target-feature=+crt-static`, set for that target only, so build scripts and
# proc-macros still link normally), without the `dev-tools` feature (demo, emulator,
# simulator), which has no place in production.
#
# Used by scripts/build-image.sh (the image) and benches/scale.rs (which measures the binary
# users run, not the one `cargo bench` builds with the test doubles linked in).
#
# Since glibc 2.34 the `files` and `dns` NSS modules are part of libc itself, so the static
# binary resolves names from the /etc/hosts and /etc/resolv.conf that Kubernetes mounts,
# without loading any NSS module. This script refuses an older glibc.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

name="koodrive-operator"
for tool in cargo rustc ldd; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "build-binary: ${tool} is required but was not found on PATH" >&2
        exit 1
    fi
done

glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
if [[ -z "${glibc}" ]] || ! printf '2.34\n%s\n' "${glibc}" | sort -V -C; then
    echo "build-binary: glibc ${glibc:-unknown} is older than 2.34; a static binary linked against it could not resolve host names in a scratch image (its NSS modules are separate libraries there)" >&2
    exit 1
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
features=()
if grep -q 'dev-tools' Cargo.toml; then
    features=(--no-default-features)
fi
target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
binary="${target_dir}/${host}/release/${name}"

echo "build-binary: building ${name} for ${host} (static, release)" >&2
rustflags_var="CARGO_TARGET_$(echo "${host}" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
# RUSTFLAGS would override the per-target flags (and could make the binary host-specific).
started=${SECONDS}
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "${rustflags_var}=-C target-feature=+crt-static" \
    cargo build --release --locked -p "${name}" --bin "${name}" --target "${host}" "${features[@]}" >&2
echo "build-binary: cargo build took $((SECONDS - started)) s" >&2

# A dynamic binary would start on the build machine and fail in the empty image.
if ldd "${binary}" 2>&1 | grep -q '=>'; then
    echo "build-binary: ${binary} is dynamically linked:" >&2
    ldd "${binary}" >&2
    exit 1
fi
if command -v file >/dev/null 2>&1; then
    description="$(file -b "${binary}")"
    if [[ "${description}" != *static* ]]; then
        echo "build-binary: ${binary} is not static: ${description}" >&2
        exit 1
    fi
    echo "build-binary: ${description}" >&2
fi
echo "build-binary: binary is $(stat -c %s "${binary}") bytes" >&2
echo "${binary}"
