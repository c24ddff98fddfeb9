#!/bin/sh
# skv generate and skv perplexity end to end on the tiny Llama test_llama writes (with a
# byte-level vocabulary): the JSON holds every run with the issue's fields, uniform ADA
# and RDR hold fewer bytes than dense, generate streams and reports each policy; bad
# options exit 2, bad files and impossible lengths exit 1 with a message.
set -eu
skv=$1
test_llama=$2
dir=$3/cli_llama
rm -rf "$dir"
mkdir -p "$dir"
model=$dir/tiny.gguf
"$test_llama" --write-tiny "$model"
text=$dir/text.txt
i=0
while [ $i -lt 40 ]; do printf 'the quick brown fox jumps over the lazy dog %d times.\n' $i; i=$((i + 1)); done > "$text"

"$skv" perplexity --model "$model" --text "$text" --tokens 300 --policy a4v8 --policy a2v2 --budget 0.5 \
    --chunk 48 --json "$dir/ppl.json" > "$dir/ppl.txt"
for p in '"f16"' '"a4v8"' '"a2v2"' '"rdr"'; do
    grep -q "\"policy\":[[:space:]]*$p" "$dir/ppl.json" || { echo "no $p run in the JSON"; exit 1; }
done
for f in budget loss loss_delta top1_agreement kv_bytes kv_bytes_dense; do
    n=$(grep -c "\"$f\":" "$dir/ppl.json")
    [ "$n" -eq 4 ] || { echo "field $f in $n of 4 runs"; exit 1; }
done
# dense: ratio 1 and agreement 1; the others hold fewer bytes
# (columns from the end: agreement, KV MiB, dense MiB, ratio, peak, seconds); RDR's peak
# is at least its final ratio (300 tokens are too few for its floor to fit 0.5)
awk '$1 == "f16" && ($(NF-5) != "1.0000" || $(NF-2) != "1.000") { print "dense row: " $0; bad = 1 }
     ($1 == "a4v8" || $1 == "a2v2" || $1 == "rdr") { n++; if (!($(NF-2) < 1)) { print "not smaller: " $0; bad = 1 } }
     $1 == "rdr" && !($(NF-1) >= $(NF-2)) { print "RDR peak below its ratio: " $0; bad = 1 }
     END { if (n != 3) { print "missing rows"; bad = 1 } exit bad }' "$dir/ppl.txt"

# --save-kv: the dense run's KV as a file skv eval reads (layer 1 only: 284 tokens, 64
# window queries, 16 decode queries); TriAttention calibrated on another text, which must exist
"$skv" perplexity --model "$model" --text "$text" --tokens 300 --budget 0.5 --scorer triattention \
    --calibrate "$dir/other.txt" --save-kv "$dir/ppl.kv" --save-layers 1 --json "$dir/tri.json" \
    > "$dir/tri.txt" 2> "$dir/tri.err" && { echo "perplexity ran without its calibration text"; exit 1; }
grep -q 'other.txt' "$dir/tri.err" || { echo "no message naming the calibration text"; cat "$dir/tri.err"; exit 1; }
i=0
while [ $i -lt 40 ]; do printf 'a slow green turtle walks under %d bright stars tonight.\n' $i; i=$((i + 1)); done \
    > "$dir/other.txt"
"$skv" perplexity --model "$model" --text "$text" --tokens 300 --budget 0.5 --budget 0.3 --scorer triattention --recent 40 \
    --calibrate "$dir/other.txt" --save-kv "$dir/ppl.kv" --save-layers 1 --json "$dir/tri.json" > "$dir/tri.txt"
grep -q '"scorer":[[:space:]]*"triattention"' "$dir/tri.json" || { echo "no triattention run"; exit 1; }
grep -q '"recent_window":[[:space:]]*40' "$dir/tri.json" || { echo "--recent not applied"; exit 1; }
awk '$1 == "rdr" { n++; if (!($(NF-2) < 1)) { print "triattention not smaller: " $0; bad = 1 } }
     END { if (n != 2) { print n " rdr rows, expected 2"; bad = 1 } exit bad }' "$dir/tri.txt"
"$skv" eval --kv "$dir/ppl.kv" --csv "$dir/ppl_eval.csv" > "$dir/ppl_eval.txt"
grep -q '^triattention,' "$dir/ppl_eval.csv" || { echo "eval --kv of the saved file: no triattention rows"; exit 1; }
"$skv" generate --model "$model" --prompt "the quick brown fox jumps over the lazy dog" --max-tokens 4 \
    --budget 0.5 --scorer triattention --calibrate "$dir/other.txt" > "$dir/gen_tri.txt" 2> "$dir/gen_tri.err" ||
    { echo "generate with triattention failed"; cat "$dir/gen_tri.err"; exit 1; }
grep -q '^KV cache' "$dir/gen_tri.txt" || { echo "generate with triattention: no report"; exit 1; }

"$skv" generate --model "$model" --prompt "the quick brown" --max-tokens 6 --policy f16 --policy a3v4 \
    > "$dir/gen.txt" 2> "$dir/gen.err"
[ "$(grep -c '^KV cache' "$dir/gen.txt")" -eq 2 ] || { echo "generate: not two reports"; cat "$dir/gen.txt"; exit 1; }
grep -q '^decode ' "$dir/gen.txt" || { echo "generate: no decode line"; exit 1; }
grep -q '^a3v4 ' "$dir/gen.txt" || { echo "generate: no side-by-side table"; exit 1; }

expect() { # exit code, then the command's arguments
    want=$1
    shift
    set +e
    "$skv" "$@" > /dev/null 2> "$dir/err.txt"
    rc=$?
    set -e
    [ $rc -eq "$want" ] || { echo "skv $*: exit $rc, expected $want"; cat "$dir/err.txt"; exit 1; }
    [ -s "$dir/err.txt" ] || { echo "skv $*: no message"; exit 1; }
}
expect 2 generate --prompt x
expect 2 generate --model "$model" --prompt x --policy q8
expect 2 generate --model "$model" --prompt x --budget 0
expect 2 generate --model "$model" --prompt x --scorer nope
expect 2 generate --model "$model" --prompt x --prompt-file "$text"
expect 2 perplexity --model "$model" --text "$text" --tokens 1
expect 2 perplexity --model "$model" --text "$text" --chunk 0
expect 1 perplexity --model "$dir/missing.gguf" --text "$text"
expect 1 perplexity --model "$text" --text "$text"
expect 1 perplexity --model "$model" --text "$text" --tokens 100000
expect 1 generate --model "$model" --prompt "abc" --prompt-tokens 50
expect 1 generate --model "$model" --prompt "abc" --max-tokens 600
expect 1 generate --model "$model" --prompt "abc" --budget 0.5 --scorer snapkv
expect 2 generate --model "$model" --prompt "abc" --budget 0.5 --scorer triattention
expect 2 perplexity --model "$model" --text "$text" --save-layers x
expect 2 perplexity --model "$model" --text "$text" --recent 0
expect 2 perplexity --model "$model" --text "$text" --tokens 80 --save-kv "$dir/x.kv"
expect 1 perplexity --model "$model" --text "$text" --tokens 300 --save-kv "$dir/x.kv" --save-layers 2
echo "cli_llama: ok"
