#!/usr/bin/env bash
# Steps to takeoff for each candidate set-up (docs/results.md, scenes-3 stall probe): one torch thread,
# one run at a time, appended to probe/takeoff.jsonl; a run already there is skipped (resumable).
set -u
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
out=docs/studies/scenes3/probe/takeoff.jsonl
while read -r method seeds flags; do
  [ -z "$method" ] && continue
  for seed in $seeds; do
    key="$method $seed $flags"
    grep -qF "\"key\": \"$key\"" "$out" 2>/dev/null && continue
    line=$(.venv/bin/python docs/studies/scenes3/probe/takeoff.py docs/studies/scenes3/probe/probe_$method.yaml \
      ${EPOCHS:-8} "$seed" --stop-at-takeoff $flags 2>/dev/null | tail -1)
    [ -n "$line" ] && python3 -c "import json,sys; d=json.loads(sys.argv[1]); d['key']=sys.argv[2]; print(json.dumps(d))" "$line" "$key" >> "$out"
  done
done < "${1:-docs/studies/scenes3/probe/takeoff_plan.txt}"
