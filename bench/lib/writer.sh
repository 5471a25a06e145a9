# bench/run part 6: a SQLite client committing 40 small transactions a
# second (synchronous=FULL, rollback journal) on the same filesystem as the
# fragmented file, alone and while e4defrag, the default service and the
# unthrottled service (no listening, pressure ignored) move it. What a
# database user feels is the longest commit: its fsyncs queue behind the
# defragmenter's writes and behind its journal commits. Sourced by
# bench/run, whose helpers (copy_of_golden, start_bg, defrag_state, put,
# ...) it uses.
# shellcheck shell=bash

writer_run() { # SCENARIO: alone | e4defrag | service | service-unthrottled
    local scen=$1 name=writer-$1 m=$work/mnt-writer-$1 state=$work/state-writer-$1
    local log=$work/writer-$1.log db_pid tool_pid='' start rc=2 done_s='' under_load=false
    local runtime=$load_cap_s
    copy_of_golden "$name"
    case $scen in
        alone) runtime=$alone_s ;;
        service) service_config "$state" "$m" "$work/$name.toml" ;;
        service-unthrottled)
            service_config "$state" "$m" "$work/$name.toml" $'[throttle]\npressure_percent = 0\nstart_mib_per_s = 0'
            ;;
    esac
    drop_caches
    start_bg db_pid python3 "$lib/sqlite_writer.py" "$m/data/orders.db" "$work/$name.json" "$warm_s"
    sleep "$warm_s"
    start=$(now)
    case $scen in
        e4defrag) start_timed tool_pid "$work/$scen.done" e4defrag "$m/data/big" >"$log" 2>&1 ;;
        service*) DEFRAGD_LOG=${BENCH_SERVICE_LOG:-info} start_bg tool_pid "${as_the_unit_runs[@]}" "$defragd" --config "$work/$name.toml" 2>"$log" ;;
    esac
    # The client runs until the file is defragmented, or its time is up;
    # looked at twice a second, not more (the bench's own processes would
    # show in the client's commits), and when it was done comes from the
    # defragmenter's own end (done_time).
    while before "$start" "$runtime"; do
        if [[ -n $tool_pid ]]; then
            rc=0
            defrag_state "$scen" "$tool_pid" "$log" "$m" || rc=$?
            ((rc == 2)) || break
        fi
        sleep 0.5
    done
    if [[ -n $tool_pid ]] && ((rc != 2)); then
        done_s=$(done_time "$scen" "$start" "$log" "$m") under_load=true
    fi
    stop_bg "$db_pid"
    put "writer.$scen.client" "@$work/$name.json"
    if [[ -n $tool_pid ]]; then
        while ((rc == 2)) && before "$start" "$finish_cap_s"; do
            sleep 0.05
            rc=0
            defrag_state "$scen" "$tool_pid" "$log" "$m" || rc=$?
        done
        ((rc == 2)) || done_s=${done_s:-$(done_time "$scen" "$start" "$log" "$m")}
        put "writer.$scen.defrag_s" "${done_s:-$(since "$start")}"
        put "writer.$scen.finished" "$( ((rc == 0)) && echo true || echo false)"
        put "writer.$scen.finished_under_load" "$( ((rc == 0)) && [[ $under_load == true ]] && echo true || echo false)"
        stop_bg "$tool_pid"
        put "writer.$scen.extents_after" "$(extents "$m/data/big")"
    fi
    detach "$m" "$work/$name.img"
}

part6() {
    local scen
    for scen in alone e4defrag service service-unthrottled; do
        say "6. a SQLite client beside the move: $scen"
        writer_run "$scen"
    done
}
