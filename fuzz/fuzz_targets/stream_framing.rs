//! Any byte stream, cut into reads at points the input chooses, through the stream
//! reassembler: no panic, every frame it hands out has the length its header says, the
//! frames joined are a prefix of the stream, and a different cut gives the same frames.

#![no_main]

use libfuzzer_sys::fuzz_target;
use uturn::stun::framing::{frame_len, Reassembler};

fn frames(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = Reassembler::new(max);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let end = cut.clamp(start, stream.len());
        let mut bad = false;
        if r
            .push(&stream[start..end], |f| {
                bad |= frame_len(f) != Ok(Some(f.len()));
                out.push(f.to_vec());
            })
            .is_err()
        {
            assert!(!bad);
            return (out, false);
        }
        assert!(!bad, "a frame's length disagrees with its header");
        assert!(r.pending() <= max);
        start = end;
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let max = 20 + usize::from(seed) * 64;
    let step = usize::from(seed % 13) + 1;
    let cuts: Vec<usize> = (0..stream.len()).step_by(step).collect();
    let (split, ok_split) = frames(stream, &cuts, max);
    let (whole, ok_whole) = frames(stream, &[], max);
    assert_eq!(split, whole);
    assert_eq!(ok_split, ok_whole);
    let joined: Vec<u8> = whole.concat();
    assert_eq!(&stream[..joined.len()], &joined[..]);
});
