#!/bin/sh
# Prints 20-mesh-config.yaml with its "FILL-ME: ca.crt of signer NAME" lines replaced by the
# signers' root certificates, ready for `kubectl apply -f -`:
#
#   examples/kubernetes/fill-mesh-config.sh istio-system=istio-system-ca.crt foo=foo-ca.crt \
#     bar=bar-ca.crt | kubectl apply -f -
#
# Each NAME=FILE puts FILE's certificates where the placeholder of signer NAME is, indented like
# it. It prints nothing and exits 1 unless every placeholder is filled, every NAME has a
# placeholder, and every FILE holds PEM certificates and no private key. MESH_CONFIG=FILE reads
# another template (default: 20-mesh-config.yaml next to this script).
set -eu

me=fill-mesh-config.sh
template=${MESH_CONFIG:-$(dirname "$0")/20-mesh-config.yaml}

if [ "$#" -eq 0 ]; then
  echo "usage: $me NAME=CA_FILE... (e.g. istio-system=istio-system-ca.crt foo=foo-ca.crt bar=bar-ca.crt)" >&2
  exit 2
fi
[ -r "$template" ] || { echo "$me: cannot read $template" >&2; exit 1; }

pairs=
for pair in "$@"; do
  name=${pair%%=*}
  file=${pair#*=}
  if [ "$name" = "$pair" ] || [ -z "$name" ] || [ -z "$file" ]; then
    echo "$me: $pair: expected NAME=CA_FILE" >&2
    exit 2
  fi
  [ -r "$file" ] || { echo "$me: $name: cannot read $file" >&2; exit 1; }
  grep -q -- '-----BEGIN CERTIFICATE-----' "$file" ||
    { echo "$me: $name: $file holds no PEM certificate (-----BEGIN CERTIFICATE-----)" >&2; exit 1; }
  if grep -q -- 'PRIVATE KEY' "$file"; then
    echo "$me: $name: $file holds a private key; give the signer's ca.crt, never its key" >&2
    exit 1
  fi
  pairs="$pairs$name=$file
"
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The awk program reads the template; on a problem it says so on stderr and exits 1, and the
# partial output is thrown away with the temporary file.
awk -v pairs="$pairs" -v me="$me" '
BEGIN {
  n = split(pairs, list, "\n")
  for (i = 1; i <= n; i++) {
    if (list[i] == "") continue
    eq = index(list[i], "=")
    name = substr(list[i], 1, eq - 1)
    if (name in file) { print me ": signer " name " is given twice" > "/dev/stderr"; bad = 1 }
    file[name] = substr(list[i], eq + 1)
  }
}
/^[ ]*FILL-ME: ca\.crt of signer / {
  indent = $0; sub(/[^ ].*$/, "", indent)
  name = $0; sub(/^[ ]*FILL-ME: ca\.crt of signer /, "", name); sub(/ .*$/, "", name)
  if (!(name in file)) { missing = missing " " name; next }
  if (name in used) { print me ": two placeholders for signer " name > "/dev/stderr"; bad = 1 }
  used[name] = 1
  while ((getline line < file[name]) > 0) {
    sub(/\r$/, "", line)
    if (line != "") print indent line
  }
  close(file[name])
  next
}
{ print }
END {
  if (missing != "") { print me ": no CA file given for signer(s):" missing > "/dev/stderr"; bad = 1 }
  for (name in file) if (!(name in used)) {
    print me ": " FILENAME " has no placeholder for signer " name > "/dev/stderr"; bad = 1
  }
  exit bad
}' "$template" >"$out"
cat "$out"
