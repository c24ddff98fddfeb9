#!/bin/sh
# skv tune end to end on a short context: it writes a database that skv info then reads
# as exact entries for this device (f16 and a3v4), a second run resumes (both classes
# already tuned, nothing measured, the file unchanged), and a file that is not a tuning
# database is left alone without --force.
set -eu
skv=$1
dir=${2:-.}/cli_tune
rm -rf "$dir"
mkdir -p "$dir"
db=$dir/tuning.json
"$skv" tune --tokens 2048 --tiers f16,a3v4 --runs 3 --fraction 0.3 --output "$db" >"$dir/tune.log" 2>&1 ||
  { cat "$dir/tune.log"; echo "skv tune failed"; exit 1; }
grep -q '"format":[[:space:]]*"skv-tuning"' "$db" || { echo "no skv-tuning database in $db"; exit 1; }
n=$(grep -c 'verify decode .*match=exact' "$dir/tune.log" || true)
[ "$n" -eq 2 ] || { cat "$dir/tune.log"; echo "tune verified $n classes, expected 2"; exit 1; }
SKV_TUNING_DB=$db "$skv" info >"$dir/info.log"
for t in f16 a3v4; do
  grep -Eq "^    $t +[^ ]+ +exact +$db " "$dir/info.log" || { cat "$dir/info.log"; echo "info: $t is not exact"; exit 1; }
done
for t in a4v8 a2v2; do
  grep -Eq "^    $t +[^ ]+ +default +built-in " "$dir/info.log" || { cat "$dir/info.log"; echo "info: $t is not built-in"; exit 1; }
done
SKV_TUNING_DB=$db "$skv" info --json | grep -q '"match":[[:space:]]*"exact"' || { echo "info --json: no exact match"; exit 1; }
cp "$db" "$dir/first.json"
"$skv" tune --tokens 2048 --tiers f16,a3v4 --runs 3 --output "$db" >"$dir/resume.log" 2>&1
n=$(grep -c 'already tuned for this device' "$dir/resume.log" || true)
[ "$n" -eq 2 ] || { cat "$dir/resume.log"; echo "resume skipped $n classes, expected 2"; exit 1; }
cmp -s "$db" "$dir/first.json" || { echo "resume changed $db"; exit 1; }
echo '{"format": "something else"}' >"$dir/other.json"
if "$skv" tune --tokens 2048 --tiers a2v2 --runs 3 --output "$dir/other.json" >"$dir/other.log" 2>&1; then
  echo "tune overwrote a file that is not a tuning database"; exit 1
fi
grep -q 'something else' "$dir/other.json" || { echo "other.json changed"; exit 1; }
echo "cli_tune: ok"
