// Preloaded with `node --import`: a device whose clock is SKEW_MS (env) ahead of the real time.
// Only Date moves; timers are unaffected. The SDK's own code is not touched.
const skew = Number(process.env.SKEW_MS || 0);
const RealDate = Date;
class SkewedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(RealDate.now() + skew);
    else super(...args);
  }
  static now() {
    return RealDate.now() + skew;
  }
}
globalThis.Date = SkewedDate;
