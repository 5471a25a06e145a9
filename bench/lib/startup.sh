# What bench/run and bench/startup-pairs share: the service started as its
# unit starts it, its config, and part 5's reader. Sourced; needs $repo.
# shellcheck shell=bash

# The CPU and I/O priority the service's unit gives it (Nice=,
# CPUSchedulingPolicy= and IOSchedulingClass= of systemd/defragd.service),
# as a command prefix: the service runs as installed, its start-up reads
# (its binary, its store) in the idle I/O class too. nice, chrt and ionice
# each exec the next, so a background job's pid is the service's.
unit_setting() { sed -n "s/^$1=//p" "$repo/systemd/defragd.service"; }
as_the_unit_runs=(nice -n "$(unit_setting Nice)" chrt "--$(unit_setting CPUSchedulingPolicy)" 0
    ionice -c "$(unit_setting IOSchedulingClass)")

service_config() { # STATE_DIR MOUNT CONFIG [EXTRA TOML]: the defaults but for these
    cat >"$3" <<CONF
state_dir = "$1"
[[filesystem]]
path = "$2"
[policy]
quiet_period = "1s"
[crawl]
files_per_second = 1000000
[control]
socket = "$1/control.sock"
${4:-}
CONF
}

# A 4k random reader, direct, at queue depth 1, over MOUNT/data/fio-read.
# It is pinned to the last CPU, in its alone runs and beside the service
# alike: left to wander, its p99 alone spread over 93-111 us in 6 runs of
# one copy (20%), pinned over 100-106 us (6%), and part 5 judges a ratio of
# such runs. Pinning hides nothing of the service: it runs where the
# scheduler puts it, the reader's CPU included, and the reader can no
# longer move away from it.
startup_reader() { # MOUNT SECONDS OUT.json
    fio --name=foreground --filename="$1/data/fio-read" --rw=randread --bs=4k --direct=1 \
        --ioengine=psync --iodepth=1 --time_based --runtime="$2" --output-format=json --output="$3" \
        --cpus_allowed="$(($(nproc) - 1))"
}
