#!/usr/bin/env bash
# Fetches the source of the Lua that Debian ships (lua5.4 with Debian's
# patches) into DIR, for the ThreadSanitizer build of the shared-thread
# specs.  Uses a private apt configuration: the system's sources are left
# alone and no root is needed.
# usage: spec/lua-src.sh DIR     (DIR/src/lua.h exists afterwards)
set -eu
dir=$1
[ -f "$dir/src/lua.h" ] && exit 0
command -v apt-get >/dev/null || { echo "lua-src: apt-get not found" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mkdir -p "$work/lists/partial" "$work/dl"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
  > "$work/sources.list"
apt_opts=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work/dl" && apt-get "${apt_opts[@]}" source --download-only lua5.4 >/dev/null)
mkdir -p "$work/tree"
tar -xzf "$work"/dl/lua5.4_*.orig.tar.gz -C "$work/tree"
tar -xJf "$work"/dl/lua5.4_*.debian.tar.xz -C "$work/tree"
src=$(echo "$work"/tree/lua-*)
while read -r p; do
  case $p in ''|'#'*) continue ;; esac
  patch -s -p1 -d "$src" < "$work/tree/debian/patches/$p"
done < "$work/tree/debian/patches/series"
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$src" "$dir"
echo "lua-src: $(basename "$(ls "$work"/dl/*.dsc)" .dsc) in $dir"
