#!/usr/bin/env bash
# Add or replace a SuperLink connection in Flower's config ($FLWR_HOME/config.toml, default ~/.flwr).
#
#   scripts/flwr_connection.sh NAME ADDRESS --insecure
#   scripts/flwr_connection.sh NAME ADDRESS --root-certificates CA.crt
#
# Safe to run again: the [superlink.NAME] table is replaced, never appended twice (a second table of
# the same name makes config.toml invalid TOML, and every `flwr` command then fails). The folder is
# created, and Flower's default config written first, when they do not exist yet.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
name=$1 address=$2 mode=$3
case $mode in
  --insecure) option='insecure = true' ;;
  --root-certificates) [[ $# -ge 4 ]] || { echo "--root-certificates needs a file" >&2; exit 2; }
    option="root-certificates = \"$(cd "$(dirname "$4")" && pwd)/$(basename "$4")\"" ;;
  *) echo "unknown option $mode (use --insecure or --root-certificates FILE)" >&2; exit 2 ;;
esac
home=${FLWR_HOME:-$HOME/.flwr}
mkdir -p "$home"
toml=$home/config.toml
[[ -f $toml ]] || flwr config ls >/dev/null # Flower writes its default config.toml
# Drop an earlier [superlink.NAME] table (its header up to the next table), then append the new one.
# Blank lines are held back until a non-blank one follows, so repeated runs add none at the end.
awk -v header="[superlink.$name]" '
  $0 == header { skip = 1; next }
  skip && /^\[/ { skip = 0 }
  skip { next }
  /^[[:space:]]*$/ { blank++; next }
  { while (blank > 0) { print ""; blank-- } print }
' "$toml" >"$toml.tmp"
printf '\n[superlink.%s]\naddress = "%s"\n%s\n' "$name" "$address" "$option" >>"$toml.tmp"
mv "$toml.tmp" "$toml"
echo "[superlink.$name] -> $address in $toml"
