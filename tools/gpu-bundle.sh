#!/usr/bin/env bash
# Packs what the GPU checks run for a GPU machine that has the CUDA toolkit but cannot install packages
# (the lent device machines: no network, no OpenMPI, protobuf, yaml-cpp or oneDNN). Builds the GPU
# targets here (the CUDA toolkit is enough, no GPU needed) and writes .gpu-bundle/bundle.tar.xz
# (ignored by git): the binaries, tools/gpu-check.sh and the configs, the shared libraries they load
# that such a machine lacks (CUDA's own and glibc's are left out: the GPU machine has its own), and
# OpenMPI's plugins and help files laid out under an install prefix so that OPAL_PREFIX relocates them.
# Usage: tools/gpu-bundle.sh [BUILD_DIR]   (default build-gpu/); then on the GPU machine, from the
# repository root: tools/gpu-check.sh --bundle .gpu-bundle/bundle.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build-gpu}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON >/dev/null
targets=(moe-train bench-moe-layer test_backend_ops test_device_training test_nccl_communicator)
cmake --build "$build_dir" -j "$(nproc)" --target "${targets[@]}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/tools" "$stage/configs"
for t in "${targets[@]}"; do
  f=$(find "$build_dir" -maxdepth 2 -type f -name "$t" -perm -u+x | head -1)
  [ -n "$f" ] || { echo "gpu-bundle: $t was not built" >&2; exit 1; }
  cp "$f" "$stage/bin/" && strip "$stage/bin/$t"
done
cp tools/gpu-check.sh "$stage/tools/" && cp configs/*.yaml "$stage/configs/"

# OpenMPI under the prefix its libraries were configured with, so that OPAL_PREFIX moves it.
ompi_lib=$(dirname "$(ldd "$stage/bin/moe-train" | awk '/libmpi\.so/ {print $3}')")  # /usr/lib/<triplet>
ompi_pkglib=$(find "$ompi_lib/openmpi/lib" -maxdepth 1 -type d -name 'openmpi*' | head -1)
rel=${ompi_pkglib#/usr/}
mkdir -p "$stage/$rel" "$stage/share"
cp -a "$ompi_pkglib/." "$stage/$rel/"
cp -a /usr/share/openmpi "$stage/share/"
[ -d /etc/openmpi ] && mkdir -p "$stage/etc" && cp -a /etc/openmpi/. "$stage/etc/"

# The shared libraries of the binaries and plugins, except glibc's, the C++ runtime and CUDA's.
skip='^(libc|libm|libdl|librt|libpthread|ld-linux.*|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
{ for f in "$stage"/bin/* "$stage/$rel"/*.so; do ldd "$f" 2>/dev/null; done; } |
  awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    base=$(basename "$lib")
    [[ $base =~ $skip ]] || cp -L "$lib" "$stage/lib/$base"
  done

mkdir -p .gpu-bundle
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
grep -qx '/.gpu-bundle/' "$exclude" 2>/dev/null || echo '/.gpu-bundle/' >> "$exclude"
tar -C "$stage" -cJf .gpu-bundle/bundle.tar.xz .
echo "gpu-bundle: .gpu-bundle/bundle.tar.xz $(du -h .gpu-bundle/bundle.tar.xz | cut -f1) ($(ls "$stage/lib" | wc -l) libraries)"
