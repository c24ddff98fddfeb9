#!/bin/sh
# skv longeval end to end on the tiny Llama test_llama writes (a byte-level vocabulary and
# random weights: it predicts its input token, so the dense cache answers nothing, which
# is what the bookkeeping is checked on): every (task, length, depth, sample, policy)
# record in the JSON with the fields docs/longeval.md names; the dense record of a sample
# has dense_correct = correct and its policies' records carry the same dense_correct;
# dense holds kv_bytes = kv_bytes_dense and every compressed policy fewer; the tables and
# one heat map per policy; bad options exit 2 with a message, a missing filler (given or
# the default beside the model), one too short, a missing model and impossible lengths
# exit 1.
set -eu
skv=$1
test_llama=$2
dir=$3/cli_longeval
rm -rf "$dir"
mkdir -p "$dir"
model=$dir/tiny.gguf
"$test_llama" --write-tiny "$model"
prose=$dir/prose.txt
i=0
while [ $i -lt 150 ]; do
    printf 'The river runs past the old mill for the %dth time. Birds sing over the fields, and the town waits for rain.\n' $i
    i=$((i + 1))
done > "$prose"

# 2 tasks x 2 lengths x 2 depths x 1 sample x 3 policies (dense, a3v4, drop 0.25 keydiff)
"$skv" longeval --model "$model" --filler "$prose" --tasks passkey,single --lengths 300,380 --depths 0,50 \
    --samples 1 --policy a3v4 --budget 0.25 --scorer keydiff --mode drop --json "$dir/le.json" --svg "$dir/le" \
    > "$dir/le.txt" 2> "$dir/le.err"
for f in task length depth sample policy budget scorer mode rule correct answer_loss kv_bytes kv_bytes_dense \
    dense_correct predicted; do
    n=$(grep -c "^[[:space:]]*\"$f\":" "$dir/le.json" || true)
    case $f in # the samples' list has task .. sample and dense_correct too (8 samples)
        task | length | depth | sample | dense_correct) want=32 ;;
        *) want=24 ;;
    esac
    [ "$n" -eq $want ] || { echo "field $f: $n, expected $want"; exit 1; }
done
awk '
    /"records":/ { on = 1 }
    !on { next }
    /^[[:space:]]*"policy":/ { policy = $2; gsub(/[",]/, "", policy) }
    /^[[:space:]]*"correct":/ { correct = $2; gsub(/,/, "", correct) }
    /^[[:space:]]*"kv_bytes":/ { kv = $2 + 0 }
    /^[[:space:]]*"kv_bytes_dense":/ { kvd = $2 + 0 }
    /^[[:space:]]*"dense_correct":/ {
        dc = $2; gsub(/,/, "", dc); n++
        if (policy == "f16") {
            dense = correct; dense_rows++
            if (dc != correct) { print "dense record " n ": dense_correct " dc ", correct " correct; bad = 1 }
            if (kv != kvd) { print "dense record " n ": kv_bytes " kv " != kv_bytes_dense " kvd; bad = 1 }
        } else {
            if (dc != dense) { print "record " n ": dense_correct " dc ", its dense record " dense; bad = 1 }
            if (!(kv < kvd)) { print "record " n " (" policy "): kv_bytes " kv " not below " kvd; bad = 1 }
            if (policy != "a3v4" && policy != "rdr") { print "record " n ": policy " policy; bad = 1 }
        }
    }
    END {
        if (n != 24 || dense_rows != 8) { print n " records, " dense_rows " dense"; bad = 1 }
        exit bad
    }' "$dir/le.json"
grep -q '"mode":[[:space:]]*"drop"' "$dir/le.json" || { echo "no drop record"; exit 1; }
for t in 'passkey, 300 tokens' 'passkey, 380 tokens' 'single, 300 tokens' 'single, 380 tokens' '^summary'; do
    grep -q "$t" "$dir/le.txt" || { echo "no table '$t'"; cat "$dir/le.txt"; exit 1; }
done
[ "$(grep -c '^\[' "$dir/le.err")" -eq 8 ] || { echo "not a progress line per sample"; cat "$dir/le.err"; exit 1; }
for p in f16 a3v4 drop-0.25-keydiff; do
    grep -q '</svg>' "$dir/le-$p.svg" || { echo "no heat map for $p"; exit 1; }
done

# TriAttention, calibrated on each sample's captured window queries: runs, and compresses
"$skv" longeval --model "$model" --filler "$prose" --tasks passkey --lengths 300 --depths 50 --samples 1 \
    --budget 0.25 --scorer triattention --mode rdr --json "$dir/tri.json" > "$dir/tri.txt" 2> "$dir/tri.err" ||
    { echo "longeval --scorer triattention failed"; cat "$dir/tri.err"; exit 1; }
grep -q '"scorer":[[:space:]]*"triattention"' "$dir/tri.json" || { echo "no triattention record"; exit 1; }
# --query-aware: the question is prefilled and compressed with the context; one token of it
# (the last) is left to predict the answer
"$skv" longeval --model "$model" --filler "$prose" --tasks single --lengths 300 --depths 50 --samples 1 \
    --budget 0.25 --scorer snapkv --mode drop --query-aware --json "$dir/qa.json" > /dev/null 2>&1 ||
    { echo "longeval --query-aware failed"; exit 1; }
grep -q '"query_aware":[[:space:]]*true' "$dir/qa.json" || { echo "query_aware not recorded"; exit 1; }
grep -q '"question_tokens":[[:space:]]*1,' "$dir/qa.json" || { echo "--query-aware: question not moved"; exit 1; }
grep -q '"query_aware":[[:space:]]*false' "$dir/le.json" || { echo "query_aware not false by default"; exit 1; }
awk '/^[[:space:]]*"kv_bytes":/ { kv = $2 + 0 } /^[[:space:]]*"kv_bytes_dense":/ { kvd = $2 + 0 }
    /^[[:space:]]*"scorer":[[:space:]]*"triattention"/ { tri = 1 }
    END { if (!tri || !(kv < kvd)) { print "triattention: kv_bytes " kv " not below " kvd; exit 1 } }' "$dir/tri.json"

expect() { # exit code, then the command's arguments
    want=$1
    shift
    set +e
    env -u SKV_MODEL "$skv" "$@" > /dev/null 2> "$dir/err.txt"
    rc=$?
    set -e
    [ $rc -eq "$want" ] || { echo "skv $*: exit $rc, expected $want"; cat "$dir/err.txt"; exit 1; }
    [ -s "$dir/err.txt" ] || { echo "skv $*: no message"; exit 1; }
}
m="--model $model --filler $prose"
expect 2 longeval --filler "$prose"
expect 2 longeval $m --lengths 0
expect 2 longeval $m --lengths 300,x
expect 2 longeval $m --depths 101
expect 2 longeval $m --samples 0
expect 2 longeval $m --tasks passkey,nope
expect 2 longeval $m --budget 0
expect 2 longeval $m --scorer nope
expect 2 longeval $m --mode both
expect 2 longeval $m --rule nope
expect 2 longeval $m --policy q8
expect 2 longeval $m --window 0
expect 2 longeval $m --frobnicate 1
expect 1 longeval --model "$model" --filler "$dir/missing.txt" --lengths 300
expect 1 longeval --model "$model" --lengths 300 # no filler.txt beside the model
grep -q 'filler.txt is missing' "$dir/err.txt" || { echo "no message naming the default filler"; exit 1; }
printf 'Too short to hide anything in.\n' > "$dir/short.txt"
expect 1 longeval --model "$model" --filler "$dir/short.txt" --lengths 300
expect 1 longeval --model "$dir/missing.gguf" --filler "$prose"
expect 1 longeval $m --lengths 600 # past the tiny model's context (512)
expect 1 longeval $m --lengths 100 # too short for the instruction and the needle
echo "cli_longeval: ok"
