# bench/run --fs xfs|btrfs: parts 1 and 2 on XFS beside xfs_fsr, or on
# btrfs beside `btrfs filesystem defragment`, on identical copies of one
# fragmented image. Sourced by bench/run, whose helpers (attach, detach,
# copy_of_golden, put, impact, ...) it uses.
#
# Where defragd answers that it does not support the filesystem (`defrag`
# skips the file, the service does not cover the mount) that is recorded
# as "not supported yet" and the peer tool's figures still stand.
#
# On btrfs, part 1 also runs each tool on shared/file, a fragmented file
# in a subvolume with a read-only snapshot, and measures what the run
# unshared (exclusive bytes added to shared/); data/big, the file timed
# and the one part 2's service moves, shares nothing.
# shellcheck shell=bash

case $fs in
    xfs)
        # -v would say "extents before:N after:M", but to syslog when
        # stdin is not a terminal (xfs_fsr's -g); the bench counts itself.
        peer_name=xfs_fsr peer_cmd=(xfs_fsr)
        mount_opts=nouuid
        ;;
    btrfs)
        # -f: flush each file before returning; without it the command
        # returns at once and the rewrite happens later, at writeback.
        peer_name=btrfs-defrag peer_cmd=(btrfs filesystem defragment -f)
        ;;
esac

# Extents by the filesystem's own tool: xfs_bmap's data extents (holes
# left out); btrfs has none better than FIEMAP (filefrag).
own_extents() { # FILE
    case $fs in
        xfs) xfs_bmap -v "$1" | awk '$1 ~ /^[0-9]+:$/ && $3 != "hole" { n++ } END { print n + 0 }' ;;
        *) extents "$1" ;;
    esac
}
# btrfs: bytes of SUBVOLUME that nothing else shares (no snapshot).
exclusive_bytes() { # SUBVOLUME
    sync -f "$1"
    btrfs filesystem du -s --raw "$1" | awk 'END { print $2 }'
}
# Whether defragd's --json answer is a skip because it does not support the
# filesystem (today: reason_code not_ext4; a backend may name it otherwise).
unsupported_skip() { # DEFRAGD_JSON
    python3 - "$1" <<'PY'
import json, sys
try:
    files = json.load(open(sys.argv[1])).get("files") or []
except (OSError, ValueError):
    sys.exit(1)
def unsupported(f):
    why = f"{f.get('reason_code', '')} {f.get('reason', '')}".lower()
    return f.get("outcome") == "skipped" and any(
        k in why for k in ("not_ext4", "not ext4", "unsupported", "not supported"))
sys.exit(0 if files and all(unsupported(f) for f in files) else 1)
PY
}

peer_golden() {
    local m=$work/mnt-golden
    say "making a $image $fs image with a fragmented $big_mib MiB file (and a $read_mib MiB file for the reader)"
    truncate -s "$image" "$work/golden.img"
    case $fs in
        # rmapbt: where defragd swaps by default (without it, SWAPEXT's
        # crash recovery is broken on 6.18 and defragd asks for consent).
        xfs) mkfs.xfs -q -f -m rmapbt=1 "$work/golden.img" ;;
        btrfs) mkfs.btrfs -q -f "$work/golden.img" >/dev/null ;;
    esac
    attach "$work/golden.img" "$m"
    case $fs in
        # XFS keeps a reserve (up to 8,192 blocks) that statfs does not
        # count as free: filled to ENOSPC, it stays free in one piece and
        # the file under test lands in it whole. Until the next mount.
        xfs) xfs_io -x -c 'resblks 0' "$m" >/dev/null ;;
    esac
    # On btrfs data/ is a plain directory of the top level, which part 2's
    # service covers (a nested subvolume would need a mount of its own).
    python3 "$lib/fragment.py" "$m" "$big_mib" "$read_mib" >/dev/null
    if [[ $fs == btrfs ]]; then
        # shared/ a subvolume, so that a read-only snapshot of it shares
        # every extent of shared/file: what a defragmenter unshares shows
        # as exclusive bytes of shared/.
        btrfs subvolume create "$m/shared" >/dev/null
        python3 "$lib/fragment.py" --interleaved "$m/shared/file" "$shared_mib"
        btrfs subvolume snapshot -r "$m/shared" "$m/snap" >/dev/null
        shared_sum=$(md5sum <"$m/shared/file")
        put move.shared_file_bytes "$(stat -c %s "$m/shared/file")"
        put move.shared_extents_golden "$(extents "$m/shared/file")"
    fi
    big_sum=$(md5sum <"$m/data/big")
    put move.file_bytes "$(stat -c %s "$m/data/big")"
    put move.block_size "$(stat -f -c %S "$m")"
    put move.extents_golden "$(extents "$m/data/big")"
    put move.own_extents_golden "$(own_extents "$m/data/big")"
    detach "$m"
    if [[ $fs == xfs ]]; then
        python3 "$lib/fragment.py" --free-space-xfs "$work/golden.img" $((big_mib << 20)) >"$work/free-space.json"
        put move.free_space "@$work/free-space.json"
    fi
}

# NAME COMMAND...: COMMAND data/big on a fresh copy of the golden image,
# from a cold cache: time (to its return, then of an fsync after it),
# extents, pages left cached, content; on btrfs
# then COMMAND shared/file (see above).
peer_move() {
    local name=$1 m file start same=false
    shift
    copy_of_golden "$name"
    m=$work/mnt-$name
    file=$m/data/big
    put "move.$name.extents_before" "$(extents "$file")"
    put "move.$name.own_extents_before" "$(own_extents "$file")"
    drop_caches
    start=$(now)
    "$@" "$file" >"$work/$name.out" 2>"$work/$name.err" || {
        cat "$work/$name.err" >&2
        say "$name failed"
        exit 1
    }
    put "move.$name.wall_s" "$(since "$start")"
    # From the return to the data on disk: `btrfs filesystem defragment -f`
    # returns once it has started write-back (filemap_flush), not finished
    # it. `sync FILE` is an fsync of the file, what defragd does before it
    # returns (`sync -f` would commit btrfs' whole transaction as well).
    start=$(now)
    sync "$file"
    put "move.$name.sync_s" "$(since "$start")"
    if [[ $name == defragd ]] && unsupported_skip "$work/$name.out"; then
        put move.defragd.not_supported true
        say "1. defragd: not supported yet ($(grep -m1 '"reason"' "$work/$name.out" | tr -s ' '))"
    fi
    put "move.$name.resident_pages" "$(cached_pages "$file")"
    put "move.$name.extents_after" "$(extents "$file")"
    put "move.$name.own_extents_after" "$(own_extents "$file")"
    [[ $(md5sum <"$file") == "$big_sum" ]] && same=true
    put "move.$name.data_unchanged" "$same"
    if [[ $fs == btrfs && $name != device ]]; then
        peer_move_shared "$name" "$m" "$@"
    fi
    detach "$m" "$work/$name.img"
}

# NAME MOUNT COMMAND...: COMMAND shared/file, whose every extent a
# read-only snapshot shares: the exclusive bytes the run added to shared/,
# its extents, and whether the file and the snapshot still read the same.
peer_move_shared() {
    local name=$1 m=$2 excl same=false
    shift 2
    local file=$m/shared/file
    put "move.$name.shared_extents_before" "$(extents "$file")"
    excl=$(exclusive_bytes "$m/shared")
    "$@" "$file" >"$work/$name-shared.out" 2>"$work/$name-shared.err" || {
        cat "$work/$name-shared.err" >&2
        say "$name failed on the snapshotted file"
        exit 1
    }
    put "move.$name.exclusive_before" "$excl"
    put "move.$name.exclusive_after" "$(exclusive_bytes "$m/shared")"
    put "move.$name.shared_extents_after" "$(extents "$file")"
    [[ $(md5sum <"$file") == "$shared_sum" && $(md5sum <"$m/snap/file") == "$shared_sum" ]] && same=true
    put "move.$name.snapshot_unchanged" "$same"
}

peer_part1() {
    say "1. device copy rate (dd, direct read + write)"
    peer_move device device_copy
    say "1. $peer_name"
    peer_move "$peer_name" "${peer_cmd[@]}"
    say "1. defragd defrag"
    peer_move defragd "$defragd" defrag --json
    put move.defragd.result "@$work/defragd.out"
}

peer_part2() {
    local scen
    for scen in alone "$peer_name" service alone-again; do
        say "2. foreground reader and appender: $scen"
        impact "$scen"
    done
}
