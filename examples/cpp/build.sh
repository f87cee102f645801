#!/usr/bin/env bash
# Build the C++ producer against the ADIOS2 C++ library that ships in the adios2 pip wheel: no ADIOS2
# install, no CMake, no DATAMOVE library. The rpath lets the binary run without LD_LIBRARY_PATH.
#
#   examples/cpp/build.sh [OUTPUT]        (default: examples/cpp/build/producer)
#
# PYTHON selects the interpreter whose adios2 package is used (default: the repository's .venv, else
# python3); CXX the compiler (default: g++).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/build/producer}"
cxx="${CXX:-g++}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

command -v "$cxx" >/dev/null || { echo "build.sh: compiler '$cxx' not found" >&2; exit 1; }
adios2_dir="$("$PYTHON" -c 'import adios2, os; print(os.path.dirname(adios2.__file__))')" || {
    echo "build.sh: '$PYTHON' cannot import adios2 (pip install adios2)" >&2; exit 1; }
[[ -f "$adios2_dir/include/adios2.h" && -e "$adios2_dir/libadios2_cxx.so" ]] || {
    echo "build.sh: $adios2_dir has no include/adios2.h or libadios2_cxx.so (not a wheel with the C++ library?)" >&2
    exit 1; }

# -rpath: where the binary finds libadios2_*.so at run time (those find their own dependencies).
# -rpath-link: lets the link-time check of libcurl & co. find the wheel's vendored libraries
# (adios2.libs/, hashed names) that ld does not look up through their $ORIGIN rpath.
mkdir -p "$(dirname "$out")"
set -x
"$cxx" -std=c++17 -O2 -Wall -Wextra \
    -I"$adios2_dir/include" \
    "$here/producer.cpp" -o "$out" \
    -L"$adios2_dir" -Wl,-rpath,"$adios2_dir" \
    -Wl,-rpath-link,"$adios2_dir/../adios2.libs" \
    -ladios2_cxx -ladios2_core -pthread
