#!/usr/bin/env bash
# C++ compiler wrapper for AOTInductor on toolchains whose g++ links libstdc++ statically into shared objects (the
# H200 machine's /opt/gcc g++ finds only libstdc++.a): the package's .so then carries a second libstdc++ and
# crashes in std::regex when torch loads it (docs/export.md). This puts the system's libstdc++.so.6 on every link
# line ahead of the driver's own -lstdc++, so the .so links it dynamically like torch does.
# Usage: REAL_CXX=<the compiler to wrap, default g++> CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh python3 ...
set -euo pipefail
real=${REAL_CXX:-g++}
lib=${LIBSTDCXX:-}
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
  [ -n "$lib" ] || [ ! -e "$d/libstdc++.so.6" ] || lib=$d/libstdc++.so.6
done
link=0
for a in "$@"; do  # only a link of a shared object gets the library; compiles, headers and queries pass through
  case $a in -shared) link=1 ;; -c | -E | -S | -M | -MM | c++-header) exec "$real" "$@" ;; esac
done
[ $link = 1 ] || exec "$real" "$@"
[ -n "$lib" ] || { echo "cxx_shared_libstdcxx.sh: no libstdc++.so.6 found; set LIBSTDCXX" >&2; exit 2; }
exec "$real" "$@" -x none -Wl,--no-as-needed "$lib" -Wl,--as-needed
