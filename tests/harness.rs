//! Checks the test harness itself (no defragd involved): the fixture really is
//! fragmented, reproducible in content, and an identical copy is identical.

use defragd_testkit as common;

use common::*;

#[test]
fn fixture_is_fragmented_and_copies_are_identical() {
    if !require_root() {
        return;
    }
    let spec = FixtureSpec {
        large_mib: 64,
        log_appends: 200,
        ..FixtureSpec::default()
    };
    let mut a = LoopImage::create(ImageSpec::ext4(512));
    let fx = build_fixture(&mut a, &spec);
    let b = a.duplicate();
    let sa = snapshot(&a.root().join(&fx.dir));
    let sb = snapshot(&b.root().join(&fx.dir));
    for (rel, st) in &sa {
        eprintln!(
            "{:40} size {:>10} extents {:>5} alloc {:>10}",
            rel.display(),
            st.size,
            st.extents,
            st.allocated
        );
    }
    for (rel, st) in &sa {
        let o = &sb[rel];
        assert_eq!(st.md5, o.md5, "copy differs: {}", rel.display());
        assert_eq!(
            st.extents,
            o.extents,
            "copy layout differs: {}",
            rel.display()
        );
    }
    for p in &fx.sparse {
        let st = &sa[p.strip_prefix(&fx.dir).unwrap()];
        assert!(st.allocated < st.size, "{} has no holes", p.display());
    }
    // Same seed, same content.
    let mut c = LoopImage::create(ImageSpec::ext4(512));
    let fx2 = build_fixture(&mut c, &spec);
    assert_eq!(
        md5(&a.root().join(&fx.large)),
        md5(&c.root().join(&fx2.large))
    );
    c.unmount_and_fsck();
    eprintln!("{}", sh("e2freefrag", [a.device().unwrap()]));
}
