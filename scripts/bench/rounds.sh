# Sourced by scripts/bench/nvmf-perf and scripts/bench/iscsi-vs-spdk: the
# rounds of a side-by-side benchmark. The caller defines
#   start_ready TARGET              start a target, ready for workloads
#   run_wl ROUND TARGET WORKLOAD    one run, one line in the results
#   stop                            stop the target
# and sets TARGETS, WORKLOADS and ROUNDS.
# ORDER=target (the default): each round starts each target once and runs
# every workload on it. ORDER=workload: each round runs each workload on
# every target in turn, restarting them, so that the runs compared are
# seconds apart rather than minutes (this machine's speed drifts by tens
# of percent within minutes; scripts/bench/paired-ratios follows it).
# SPIN=1 keeps a shell loop spinning on CPU 0, the client's, for the whole
# run (it ends with the script): a client with half a core, slower than
# the target, as every reader of large transfers is on a link slower than
# the target (see scripts/bench/slow-reader).
run_rounds() {
    if [ "${SPIN:-0}" = 1 ]; then
        taskset -c 0 sh -c 'while kill -0 "$1" 2>/dev/null; do :; done' spin $$ &
    fi
    for round in $(seq "$ROUNDS"); do
        if [ "${ORDER:-target}" = workload ]; then
            for wl in $WORKLOADS; do
                for tgt in $TARGETS; do
                    start_ready "$tgt"
                    run_wl "$round" "$tgt" "$wl"
                    stop
                done
            done
        else
            for tgt in $TARGETS; do
                start_ready "$tgt"
                for wl in $WORKLOADS; do
                    run_wl "$round" "$tgt" "$wl"
                done
                stop
            done
        fi
    done
}
