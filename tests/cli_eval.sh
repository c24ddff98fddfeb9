#!/bin/sh
# skv eval end to end on a short context: the CSV has every cell, and the cells whose
# outcome the reference fixes hold (thresholds from measured runs, with margin):
# at 1/2 of F16 bytes with every tier, ManifoldKV keeps every needle, single and
# multi-key, with output error under 0.1 (measured 0.06 at 1024 tokens); at 1/4, RDR's
# tier mix has lower error than dropping alone at equal bytes (measured 0.47 vs 0.61).
set -eu
skv=$1
out=${2:-.}/cli_eval.csv
rm -f "$out"
"$skv" eval --tokens 1024 --csv "$out" >/dev/null
rows=$(awk 'NR > 1' "$out" | wc -l)
[ "$rows" -eq 60 ] || { echo "expected 60 rows, got $rows"; exit 1; }
awk -F, '
  NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  { key = $col["scorer"] "/" $col["tiers"] "/" $col["budget"] }
  $col["multikey_recall"] == "" { print "empty multikey_recall: " key; bad = 1 }
  key == "manifold/rdr/0.5" {
    seen++
    if ($col["needle_recall"] != 1 || $col["multikey_recall"] != 1 || $col["out_rel_err"] >= 0.1) {
      print "manifold/rdr/0.5: " $0; bad = 1
    }
  }
  key == "manifold/rdr/0.25" { rdr = $col["out_rel_err"]; seen++ }
  key == "manifold/drop/0.25" { drop = $col["out_rel_err"]; seen++ }
  END {
    if (seen != 3) { print "missing cells"; exit 1 }
    if (!(rdr < drop)) { print "rdr error " rdr " not below drop error " drop; bad = 1 }
    exit bad
  }' "$out"
echo "skv eval: 60 cells; checks hold"
