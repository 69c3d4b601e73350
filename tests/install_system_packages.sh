#!/usr/bin/env bash
# Install the Debian packages listed in tests/system-packages.txt that are missing (make test runs this).
# Where apt-get is unavailable or we are not root, say so and go on: the tests that need a package skip
# with a message naming it.
set -u
list="$(dirname "$0")/system-packages.txt"
missing=()
while read -r pkg _; do
  case "$pkg" in ""|\#*) continue ;; esac
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < "$list"
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "note: cannot install Debian packages (${missing[*]}): no apt-get or not root; tests needing them skip" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "note: apt-get could not install ${missing[*]}; tests needing them skip" >&2
exit 0
