// A device whose clock is SKEW_MS ahead of the real time: preloaded with `node --import` (SKEW_MS
// from the environment) or run in a page before its scripts (globalThis.SKEW_MS). Only Date
// moves; timers are unaffected. The SDKs' own code is not touched.
{
  const skew = Number(globalThis.process?.env?.SKEW_MS ?? globalThis.SKEW_MS ?? 0);
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
}
