#!/usr/bin/env bash
# Builds an OpenSSL 3 FIPS provider (fips.so) from Debian's openssl source package, runs
# `openssl fipsinstall` and writes an openssl.cnf that activates the fips and base providers.
# This is a test/CI provider built from source: it is NOT a validated module. Operators bring
# their own validated provider (docs/fips.md).
#
# Usage: scripts/build-fips-provider.sh [OUT_DIR]   (default .cache/fips, relative to the repo)
# Result: OUT_DIR/{fips.so, fipsmodule.cnf, openssl.cnf, build-info.json}
# Use:    OPENSSL_CONF=OUT_DIR/openssl.cnf OPENSSL_MODULES=OUT_DIR node --enable-fips …
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/.cache/fips}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# The cache never belongs in git, wherever it lives.
[ -f "$out/../.gitignore" ] || [ "$(basename "$(dirname "$out")")" != ".cache" ] || printf '*\n' >"$out/../.gitignore"

log() { printf 'build-fips-provider: %s\n' "$*" >&2; }

if [ -f "$out/fips.so" ] && [ -f "$out/fipsmodule.cnf" ] && [ -f "$out/openssl.cnf" ] && [ -f "$out/build-info.json" ]; then
  # Idempotent: the provider still loads and passes its self-test with the config we wrote.
  if OPENSSL_CONF="$out/openssl.cnf" OPENSSL_MODULES="$out" openssl list -providers 2>/dev/null | grep -q 'status: active'; then
    log "already built in $out ($(cat "$out/build-info.json"))"
    exit 0
  fi
  log "existing build in $out does not load; rebuilding"
fi

for tool in gcc make perl dpkg-source apt-get openssl; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool (install build-essential dpkg-dev)"; exit 1; }
done

start=$(date +%s)

# `apt-get source` needs deb-src entries for the suites the binary packages come from.
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  if [ "$(id -u)" != 0 ]; then
    log "no deb-src entry in /etc/apt and not root: add one for your suite or run as root"
    exit 1
  fi
  src_list=/etc/apt/sources.list.d/pgwarden-deb-src.sources
  log "adding deb-src entries to $src_list"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ "$f" = "$src_list" ] && continue
    # Same stanzas as the binary sources, one per stanza, with Types: deb-src.
    awk 'BEGIN{RS="";ORS="\n\n"} /Types:[^\n]*deb([ \n]|$)/ {sub(/Types:[^\n]*/,"Types: deb-src"); print}' "$f"
  done >"$src_list"
  if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list >/etc/apt/sources.list.d/pgwarden-deb-src.list
  fi
  apt-get update -qq
fi

work="$out/build"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
log "fetching Debian openssl source into $work"
# Newest source version first; a mirror may list a version whose files it no longer serves.
fetched=""
for v in $(apt-cache showsrc openssl | sed -n 's/^Version: //p' | sort -Vru); do
  if apt-get source -qq "openssl=$v" >"source-$v.log" 2>&1; then fetched="$v"; break; fi
  log "openssl $v source not available ($(grep -m1 '^E:' "source-$v.log" || echo unknown error)); trying an older one"
  find . -mindepth 1 -maxdepth 1 ! -name 'source-*.log' -exec rm -rf {} +
done
[ -n "$fetched" ] || { log "no openssl source package could be fetched"; exit 1; }
srcdir="$(find . -maxdepth 1 -type d -name 'openssl-3*' | head -n 1)"
[ -n "$srcdir" ] || { log "apt-get source produced no openssl-3.* tree"; exit 1; }
cd "$srcdir"
version="$(awk -F= '/^MAJOR|^MINOR|^PATCH/{printf "%s.", $2}' VERSION.dat | sed 's/\.$//')"

log "configuring OpenSSL $version with enable-fips"
./Configure enable-fips no-tests >configure.log 2>&1 || { tail -n 30 configure.log; exit 1; }
# Only the FIPS module: generated headers, then providers/fips.so (no libssl, no apps).
jobs="${FIPS_BUILD_JOBS:-2}"
log "building providers/fips.so with make -j$jobs"
make -j"$jobs" build_generated >make.log 2>&1 || { tail -n 30 make.log; exit 1; }
make -j"$jobs" providers/fips.so >>make.log 2>&1 || { tail -n 30 make.log; exit 1; }

cp providers/fips.so "$out/fips.so"
# The system openssl (3.0.x here) computes the module MAC and writes the self-test config.
openssl fipsinstall -module "$out/fips.so" -out "$out/fipsmodule.cnf" -provider_name fips >fipsinstall.log 2>&1 \
  || { cat fipsinstall.log; exit 1; }

# nodejs_conf is the section Node reads; openssl_conf is what the openssl CLI reads.
cat >"$out/openssl.cnf" <<EOF
# Written by scripts/build-fips-provider.sh: activates the FIPS and base providers only.
config_diagnostics = 1
openssl_conf = pgwarden_fips_init
nodejs_conf = pgwarden_fips_init

.include $out/fipsmodule.cnf

[pgwarden_fips_init]
providers = pgwarden_fips_providers
alg_section = pgwarden_fips_algorithms

[pgwarden_fips_providers]
fips = fips_sect
base = pgwarden_base

[pgwarden_base]
activate = 1

[pgwarden_fips_algorithms]
default_properties = fips=yes
EOF

end=$(date +%s)
printf '{"opensslSource":"%s","seconds":%d,"builtAt":"%s"}\n' "$version" "$((end - start))" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$out/build-info.json"
cd "$out"
rm -rf "$work"
OPENSSL_CONF="$out/openssl.cnf" OPENSSL_MODULES="$out" openssl list -providers >&2
log "built FIPS provider from OpenSSL $version in $((end - start))s into $out"
