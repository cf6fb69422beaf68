// Drives one server-side Node SDK, unchanged, from a plan given as JSON on the command line:
//   node send.mjs '{"sdk": "segment"|"rudderstack", "url": ..., "writeKey": ..., "options": {...},
//                   "calls": [{"type": "track", "userId": ..., "event": ..., ...}, ...]}'
// Each call is passed as it is to the SDK method of its type; then the SDK is flushed and closed.
// Prints {"sent": n} on success; any SDK error fails the process.
import { Analytics as SegmentAnalytics } from "@segment/analytics-node";
import RudderAnalytics from "@rudderstack/rudder-sdk-node";

const plan = JSON.parse(process.argv[2]);
const errors = [];

async function segment() {
  const client = new SegmentAnalytics({ writeKey: plan.writeKey, host: plan.url, ...plan.options });
  client.on("error", (err) => errors.push(String(err?.reason ?? err?.message ?? err)));
  for (const { type, ...fields } of plan.calls) client[type](fields);
  await client.closeAndFlush({ timeout: 20000 });
}

async function rudderstack() {
  const client = new RudderAnalytics(plan.writeKey, {
    dataPlaneUrl: plan.url,
    errorHandler: (err) => errors.push(String(err?.message ?? err)),
    ...plan.options,
  });
  for (const { type, ...fields } of plan.calls) client[type](fields);
  // One flush sends at most flushAt messages (and waits for the one in flight).
  do await client.flush();
  while (client.queue.length > 0);
}

await (plan.sdk === "segment" ? segment() : rudderstack());
if (errors.length) {
  console.error(JSON.stringify({ errors }));
  process.exit(1);
}
console.log(JSON.stringify({ sent: plan.calls.length }));
