#!/bin/bash
# Run moat's tests: every cmocka unit-test binary of a build, then the
# integration tests (pytest). Prints each failure and ends with one line
#   N passed, N failed[, N skipped]
# exiting non-zero if anything failed. This is what `make test` runs.
#
# Usage: scripts/run-tests.sh [BUILD_DIR]     (default: build-test)
# Env:   UNIT_TIMEOUT   seconds allowed per unit-test binary (default 300)
#        PYTEST_TIMEOUT seconds allowed for the whole pytest run (default 1800)
#        PYTEST_ARGS    extra pytest arguments (e.g. "-k smtp -x")
#        MOAT_SKIP_INTEGRATION=1  run the unit tests only (make unit)
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd -P)
build=${1:-build-test}
[ -d "$build" ] || { echo "run-tests: $build: no such build directory" >&2; exit 2; }
build=$(cd "$build" && pwd -P)
unit_timeout=${UNIT_TIMEOUT:-300}
pytest_timeout=${PYTEST_TIMEOUT:-1800}
python=/usr/bin/python3

passed=0 failed=0 skipped=0
failures=""          # newline-separated failure names
add_failure() { failures="$failures$1
"; }

tmp=$(mktemp -d /tmp/moat-run-tests.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
trap 'echo "run-tests: interrupted" >&2; exit 130' INT TERM

# --- unit tests ---------------------------------------------------------------
# cmocka 1.1.5 TAP (CMOCKA_MESSAGE_OUTPUT=TAP), per group:
#   1..N
#   ok 1 - name
#   not ok 2 - name
#   # <failure message lines>
#   not ok 3 # SKIP name        <- a skipped test, not a failure
#   # ok - group  /  # not ok - group     <- group summary, not a test
# A test's own output may lack a newline, so a result can be glued after it
# ("hellook 1 - name") and a summary can be glued after a result.

parse_tap() {
  # stdin: TAP; stdout: "P F S" then one "FAIL name" line per failure.
  awk '
    {
      line = $0
      sub(/\r$/, "", line)
      if (line ~ /^#/) next           # diagnostics and group summaries
      # Results may be preceded by unterminated test output.
      if (match(line, /(not ok|ok) [0-9]+( - | # SKIP|$)/)) {
        res = substr(line, RSTART)
        notok = (substr(res, 1, 6) == "not ok")
        rest = res; sub(/^(not ok|ok) [0-9]+/, "", rest)
        name = rest
        sub(/# (not ok|ok) - .*$/, "", name)        # glued group summary
        if (name ~ /^ # SKIP/) {
          skip++
          next
        }
        sub(/^ - /, "", name)
        if (notok) { fail++; fails[fail] = name } else pass++
        got++
        next
      }
      if (match(line, /^[0-9]+\.\.[0-9]+/)) {
        split(substr(line, RSTART, RLENGTH), p, /\.\./)
        plan += p[2] - p[1] + 1
      }
    }
    END {
      # Tests planned but never reported (crash mid-group) are failures.
      missing = plan - got - skip
      if (missing > 0) { fail += missing; fails[fail] = "(" missing " planned test(s) did not report)" }
      printf "%d %d %d\n", pass, fail, skip
      for (i = 1; i <= fail; i++) if (i in fails) print "FAIL " fails[i]
    }'
}

units=$(find "$build" -maxdepth 1 -name 'test_*' -type f -perm -u+x | sort)
n_units=0
for bin in $units; do
  n_units=$((n_units + 1))
  name=${bin##*/}
  rc=0
  (cd "$build" && CMOCKA_MESSAGE_OUTPUT=TAP timeout -k 5 "$unit_timeout" "$bin") \
    > "$tmp/$name.out" 2> "$tmp/$name.err" || rc=$?
  parse_tap < "$tmp/$name.out" > "$tmp/$name.res"
  read -r p f s < "$tmp/$name.res"
  if [ $((p + f + s)) -eq 0 ]; then
    # No TAP at all: the binary crashed, timed out or is not a cmocka test.
    if [ "$rc" -ne 0 ]; then
      f=1
      echo "FAIL $name: exit status $rc, no TAP output" >> "$tmp/$name.res"
    fi
  elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    # All reported tests passed, yet the binary failed (e.g. a sanitizer
    # report at exit, a crash after the last group, a timeout).
    f=1
    echo "FAIL exit status $rc after all tests passed" >> "$tmp/$name.res"
  fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  if [ "$f" -gt 0 ]; then
    echo "--- $name: $f failed (exit $rc)"
    while IFS= read -r t; do
      case $t in
        "FAIL $name: "*) t=${t#FAIL } ;;
        "FAIL "*) t="$name: ${t#FAIL }" ;;
        *) continue ;;
      esac
      echo "    FAILED $t"
      add_failure "$t"
    done < "$tmp/$name.res"
    # The binary's diagnostics (bounded).
    grep -v '^ok ' "$tmp/$name.out" | head -n 40 | sed 's/^/    | /' || true
    head -n 20 "$tmp/$name.err" | sed 's/^/    ! /'
  fi
done
echo "unit: $n_units binaries, $passed passed, $failed failed, $skipped skipped"

# --- integration tests ----------------------------------------------------------
if [ -d "$repo/tests/integration" ] && [ -z "${MOAT_SKIP_INTEGRATION:-}" ]; then
  rc=0
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
  (cd "$repo" && MOAT_BUILD_DIR=$build timeout -k 10 "$pytest_timeout" \
      "$python" -m pytest tests/integration -q -rfE \
      --junitxml="$build/pytest.xml" ${PYTEST_ARGS:-}) || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "integration: no tests collected"
  elif [ ! -s "$build/pytest.xml" ] || [ "$rc" -gt 5 ] || [ "$rc" -eq 2 ] \
       || [ "$rc" -eq 3 ] || [ "$rc" -eq 4 ]; then
    failed=$((failed + 1))
    add_failure "pytest: exit status $rc (interrupted, internal or usage error)"
  else
    "$python" - "$build/pytest.xml" > "$tmp/pytest.res" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
p = f = s = 0
names = []
for tc in root.iter("testcase"):
    tags = {child.tag for child in tc}
    name = "%s::%s" % (tc.get("classname", ""), tc.get("name", ""))
    if "failure" in tags or "error" in tags:
        f += 1
        names.append(name + (" (error)" if "failure" not in tags else ""))
    elif "skipped" in tags:
        s += 1
    else:
        p += 1
print(p, f, s)
for n in names:
    print("FAIL", n)
EOF
    read -r p f s < "$tmp/pytest.res"
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      f=1
      echo "FAIL pytest: exit status $rc with no failed test in its report" >> "$tmp/pytest.res"
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    while IFS= read -r t; do
      case $t in "FAIL "*) add_failure "integration: ${t#FAIL }" ;; esac
    done < "$tmp/pytest.res"
    echo "integration: $p passed, $f failed, $s skipped"
  fi
fi

# --- summary ----------------------------------------------------------------------
if [ -n "$failures" ]; then
  echo "Failures:"
  printf '%s' "$failures" | sed 's/^/  /'
fi
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
