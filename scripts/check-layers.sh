#!/bin/sh
# Fail if a module includes a header from a layer above it (see
# docs/internals/invariants.md, rule 7). Ranks: core 0; policy 1 (table
# types and their matchers); conf 2 (fills them from the file); spool 2;
# smtp/admin/delivery 3; queue 4 (drives spool and delivery). moatd.c and
# moatctl.c may include anything.
set -eu
cd "$(dirname "$0")/.."
rank() {
  case "$1" in
    core) echo 0 ;; policy) echo 1 ;; conf|spool) echo 2 ;;
    smtp|admin|delivery) echo 3 ;; queue) echo 4 ;; *) echo 9 ;;
  esac
}
bad=0
for f in src/*/*.c src/*/*.h; do
  mod=$(basename "$(dirname "$f")")
  r=$(rank "$mod")
  for inc in $(sed -n 's/^#include "\([a-z_]*\)\/.*/\1/p' "$f"); do
    if [ "$(rank "$inc")" -gt "$r" ]; then
      echo "check-layers: $f includes $inc/ (a layer above $mod/)" >&2
      bad=1
    fi
  done
done
exit $bad
