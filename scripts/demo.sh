#!/usr/bin/env bash
# The main job end to end on local services, no cluster:
#   1. starts Redis, MariaDB, OpenSearch and the NLP service on 127.0.0.1 (installing what is
#      missing; tests/testbed/up.sh);
#   2. builds the release binaries;
#   3. demo-prepare: drops and recreates the database `migrate_demo`, loads the articles,
#      writes the keyword files, recreates the index and the Redis keys of the queue
#      `migrate_demo`, enqueues every id, and writes the job (3 workers, a per-worker memory
#      limit, and a test-only leak);
#   4. migrate-operator local --leaky-workers 1: supervises the workers with a progress bar.
#      One of the workers leaks (the job's test-only leak), so its memory climbs to the soft
#      limit, it is drained and replaced by a new leaky worker, and the memory restarts
#      show; the others run a copy of the job without the leak, and their memory stays flat.
#      Then it prints the summary (documents, restarts by reason, the leaking stage, which
#      workers leaked, throughput) and draws every worker's memory over time, restarts
#      marked, as a PNG;
#   5. says where to look next.
# Running it again starts over.
#
#   scripts/demo.sh [--articles N] [demo-prepare flags...]
#       --articles N          articles to move (default 50000: about two minutes on 2 cores)
#       --workers N           worker processes (default 3)
#       --memory-limit SIZE   per-worker memory limit (default 192Mi; drained at 70%)
#       --leak-bytes N        bytes the leaky worker leaks per task on purpose, 0 for none
#                             (default 32768)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
started=$SECONDS

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
step() { printf '\n==> %s (%ds)\n' "$*" $((SECONDS - started)); }

articles=50000
prepare_args=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --articles) articles=${2:?--articles needs a number}; shift 2 ;;
    --articles=*) articles=${1#*=}; shift ;;
    *=*) prepare_args+=("${1%%=*}" "${1#*=}"); shift ;;
    *) prepare_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
  esac
done

demo=$root/target/demo
queue=migrate_demo
index=migrate_demo

step "testbed: redis mariadb opensearch nlp"
tests/testbed/up.sh redis mariadb opensearch nlp
set -a
# shellcheck disable=SC1091
source "$root/.testbed/env"
set +a

step "build (release)"
cargo build --release -p migrate-operator -p migrate-worker -p migrate-e2e --bins

step "prepare $articles articles"
target/release/demo-prepare --articles "$articles" --dir "$demo" --database migrate_demo \
  --queue "$queue" --index "$index" ${prepare_args[@]+"${prepare_args[@]}"}
# shellcheck disable=SC1091
source "$demo/demo.env"

step "run: migrate-operator local --job $demo/job.yaml"
rm -rf "$demo/logs"
target/release/migrate-operator local --job "$demo/job.yaml" --log-dir "$demo/logs" \
  --leaky-workers 1 --summary-json "$demo/summary.json" --plot "$demo/rss.png"

count=$(curl -sf -m 30 "$ES_URL/$index/_count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p' || true)
step "done"
cat <<EOF
Where to look next:
  the index ($count documents):
      curl -s '$ES_URL/$index/_count'
      curl -s '$ES_URL/$index/_search?size=1&pretty'
  the Redis keys of the queue $queue:
      redis-cli -u '$REDIS_URL' hgetall $queue:stats
      redis-cli -u '$REDIS_URL' hscan $queue:counts 0 count 20
      redis-cli -u '$REDIS_URL' lrange $queue:dead 0 9
  the worker logs, one file per worker process, and the job the workers that do not leak ran:
      ls $demo/logs/
      $demo/logs/job-without-leak.yaml
  the memory of every worker over time, against the soft and hard limits, restarts marked:
      $demo/rss.png
  the summary as JSON, and the job that ran:
      $demo/summary.json
      $demo/job.yaml
Run scripts/demo.sh again to start over.
EOF
