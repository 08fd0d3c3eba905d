// The latency histogram both load generators report (decoded by bench/harness.py):
// bucket i covers [10^(i/100 - 2), 10^((i+1)/100 - 2)) ms, i in 0..799.
const BUCKETS = 800;

export class Histogram {
  constructor() { this.reset(); }
  reset() { this.counts = new Uint32Array(BUCKETS); this.min = Infinity; this.max = -Infinity; }
  record(ms) {
    if (ms < this.min) this.min = ms;
    if (ms > this.max) this.max = ms;
    // Clock noise can give ms <= 0: those land in bucket 0 (log10 → -Infinity).
    let i = Math.floor((Math.log10(ms) + 2) * 100);
    if (!(i >= 0)) i = 0; else if (i >= BUCKETS) i = BUCKETS - 1;
    this.counts[i]++;
  }
  encode() {
    const i = [], c = [];
    for (let k = 0; k < BUCKETS; k++) if (this.counts[k]) { i.push(k); c.push(this.counts[k]); }
    const empty = this.min === Infinity;
    return { i, c, min: empty ? null : this.min, max: empty ? null : this.max };
  }
}
