#!/bin/sh
# A tiny project's test suite, run by the ci_runner example in the lab (tests/examples.rs):
# builds into the project's disk, runs two checks a second apart (so the runner's streaming
# shows), writes to stderr once, and fails with status 3 when asked to (`sh ./test.sh fail`).
set -e
echo "build: $(cat src/a.txt src/b.txt | wc -l) sources"
mkdir -p build
cat src/*.txt > build/all.txt
sleep 1
echo "check 1: 19 + 23 = $(( $(cat src/a.txt) + $(cat src/b.txt) ))"
echo "check 1 writes a warning" >&2
sleep 1
test "$(wc -l < build/all.txt)" -eq 2
echo "check 2: the build output is on the project's disk"
if [ "$1" = fail ]; then
  echo "check 3: failing on purpose"
  exit 3
fi
echo "done: all checks passed"
