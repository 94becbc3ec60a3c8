#!/usr/bin/env bash
# Builds the koodrive-operator container image without a container engine or a registry, and
# writes it as one archive that both `kind load image-archive` and `docker load` accept:
#
#   target/image/koodrive-operator-<version>.oci.tar     image koodrive-operator:<version>
#
# (or $KOODRIVE_IMAGE_ARCHIVE when set). Then:
#
#   kind load image-archive target/image/koodrive-operator-<version>.oci.tar
#   docker load -i target/image/koodrive-operator-<version>.oci.tar
#
# The image is the same as the Dockerfile's: one static binary in an otherwise empty
# (`FROM scratch`) image, running as 65532:65532 (numeric, so Kubernetes can check
# runAsNonRoot), entrypoint the binary, `CMD ["run"]`, port 8080, OCI labels with the version
# from Cargo.toml. Nothing is pulled: buildah starts from scratch, in a private storage
# directory that is removed afterwards.
#
# The binary is scripts/build-binary.sh's: static, release, without the dev-tools feature.
# It needs no file from the image at run time:
#   - TLS: reqwest uses rustls with the WebPKI roots compiled in (no /etc/ssl); private CAs
#     come from --ca-bundle / SSL_CERT_FILE.
#   - DNS: glibc >= 2.34 resolves from /etc/hosts and /etc/resolv.conf without NSS modules
#     (scripts/build-binary.sh checks the version).
#
# Why the archive holds two formats: containerd's importer (`kind load image-archive`, and
# `docker load` with Docker's containerd image store) reads an OCI image layout (`oci-layout`,
# `index.json`, `blobs/`) and names the image after the `io.containerd.image.name`
# annotation; Docker's classic image store reads only `manifest.json` (the docker-archive
# format), whose `Config` and `Layers` may point at the same blobs. So the layout gets both
# annotations and a `manifest.json` beside it -- the shape `docker save` itself writes since
# Docker 25 -- and each loader finds what it reads, with no blob stored twice.
#
# Needs: cargo, buildah, python3, GNU tar; run as root (as on our machines and CI) or with
# rootless buildah set up. scripts/install-test-tools.sh installs buildah (and the umoci and
# runc that tests/it/image.rs starts the image with).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

name="koodrive-operator"
for tool in cargo buildah python3 tar; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "build-image: ${tool} is required but was not found on PATH (buildah: scripts/install-test-tools.sh installs it)" >&2
        exit 1
    fi
done

# `cargo pkgid` also reads a version inherited from a workspace: `...#name@1.2.3` or `...#1.2.3`.
pkgid="$(cargo pkgid --quiet -p "${name}")"
version="${pkgid##*[#@]}"
host="$(rustc -vV | sed -n 's/^host: //p')"
case "${host}" in
    x86_64-*) arch=amd64 ;;
    aarch64-*) arch=arm64 ;;
    *) echo "build-image: no image architecture known for ${host}" >&2; exit 1 ;;
esac
target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
out="${KOODRIVE_IMAGE_ARCHIVE:-${target_dir}/image/${name}-${version}.oci.tar}"
binary="$(bash scripts/build-binary.sh | tail -n 1)"

# The git commit time makes rebuilding the same commit produce the same image digest.
created="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"

work="$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")"
cleanup() {
    # vfs storage holds plain root-owned files and no mounts: removing the directory is enough.
    rm -rf "${work}"
}
trap cleanup EXIT
bah() {
    buildah --root "${work}/storage" --runroot "${work}/run" --storage-driver vfs "$@"
}

container="$(bah from --quiet scratch)"
bah copy --quiet --chown 0:0 --chmod 0755 "${container}" "${binary}" "/${name}" >/dev/null
bah config \
    --os linux --arch "${arch}" \
    --user 65532:65532 \
    --workingdir / \
    --entrypoint "[\"/${name}\"]" \
    --cmd '["run"]' \
    --port 8080/tcp \
    --label org.opencontainers.image.title="${name}" \
    --label org.opencontainers.image.description="Kubernetes operator that provisions users into Huawei Cloud KooDrive from declarative UserBatch resources" \
    --label org.opencontainers.image.source="https://github.com/koodrive-operator/koodrive-operator" \
    --label org.opencontainers.image.licenses="Apache-2.0" \
    --label org.opencontainers.image.version="${version}" \
    --label org.opencontainers.image.revision="${revision}" \
    "${container}"
bah commit --quiet --format oci --identity-label=false --timestamp "${created}" --rm "${container}" "${name}:${version}" >/dev/null
layout="${work}/layout"
bah push --quiet "${name}:${version}" "oci:${layout}:${version}"

python3 - "${layout}" "${name}" "${version}" <<'PY'
import json, pathlib, sys
layout, name, version = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
index = json.loads((layout / "index.json").read_text())
if len(index["manifests"]) != 1:
    sys.exit(f"expected one manifest in {layout}/index.json, found {len(index['manifests'])}")
descriptor = index["manifests"][0]
# containerd names the image after io.containerd.image.name; the OCI ref name is the tag,
# which is what `docker save` writes too.
descriptor["annotations"] = {
    "io.containerd.image.name": f"docker.io/library/{name}:{version}",
    "org.opencontainers.image.ref.name": version,
}
(layout / "index.json").write_text(json.dumps(index, separators=(",", ":")))

def blob(digest):
    algorithm, hex_ = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_}"

manifest = json.loads((layout / blob(descriptor["digest"])).read_text())
docker_manifest = [{
    "Config": blob(manifest["config"]["digest"]),
    "RepoTags": [f"{name}:{version}"],
    "Layers": [blob(layer["digest"]) for layer in manifest["layers"]],
}]
(layout / "manifest.json").write_text(json.dumps(docker_manifest, separators=(",", ":")))
PY

mkdir -p "$(dirname "${out}")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${created}" \
    -cf "${out}.partial" -C "${layout}" oci-layout index.json manifest.json blobs
mv "${out}.partial" "${out}"
echo "build-image: wrote ${out} ($(stat -c %s "${out}") bytes), image ${name}:${version}"
echo "build-image: load it with: kind load image-archive ${out}   or   docker load -i ${out}"
