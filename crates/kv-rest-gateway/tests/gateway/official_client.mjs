// Drives the official JS client `@upstash/redis` against the gateway with its default settings:
// base64 response encoding, auto-pipelining, read-your-writes sync tokens, telemetry headers.
// Run by tests/gateway/official_client.rs; prints "ok" when every check passed.
import { Redis } from "@upstash/redis";
import assert from "node:assert/strict";

const url = process.env.GATEWAY_URL;
const token = process.env.GATEWAY_TOKEN;
const redis = new Redis({ url, token });

// set / get / incr, plain and JSON values
assert.equal(await redis.set("js:k", "hello"), "OK");
assert.equal(await redis.get("js:k"), "hello");
assert.equal(await redis.get("js:missing"), null);
await redis.set("js:obj", { a: 1, b: [1, 2], s: "héllo ✓" });
assert.deepEqual(await redis.get("js:obj"), { a: 1, b: [1, 2], s: "héllo ✓" });
assert.equal(await redis.incr("js:n"), 1);
assert.equal(await redis.set("js:ok", "OK"), "OK");
assert.equal(await redis.get("js:ok"), "OK");
assert.equal(await redis.ping(), "PONG");
assert.equal(await redis.type("js:k"), "string");
assert.equal(await redis.set("js:nx", "1", { nx: true, px: 60000 }), "OK");
assert.equal(await redis.set("js:nx", "2", { nx: true, px: 60000 }), null);

// concurrent calls: auto-pipelined into one /pipeline request
const [n, k, missing, n2] = await Promise.all([
  redis.incr("js:n"),
  redis.get("js:k"),
  redis.get("js:missing"),
  redis.incrby("js:n", 10),
]);
assert.deepEqual([n, k, missing, n2], [2, "hello", null, 12]);

// explicit pipeline and transaction
const p = redis.pipeline();
p.set("js:p", "v");
p.get("js:p");
p.incr("js:p2");
p.lpush("js:l", "a", "b");
p.lrange("js:l", 0, -1);
assert.deepEqual(await p.exec(), ["OK", "v", 1, 2, ["b", "a"]]);
const tx = redis.multi();
tx.incr("js:t");
tx.incr("js:t");
tx.get("js:t");
assert.deepEqual(await tx.exec(), [1, 2, 2]);

// hashes (the client folds HGETALL's flat array into an object)
await redis.hset("js:h", { f1: "v1", f2: 2 });
assert.deepEqual(await redis.hgetall("js:h"), { f1: "v1", f2: 2 });

// scripts: plain eval, and the Upstash-only flag through createScript (EVALSHA → NOSCRIPT →
// EVAL fallback, then EVALSHA by the flagged text's SHA)
assert.equal(await redis.eval("return ARGV[1]", [], ["x"]), "x");
assert.deepEqual(await redis.eval("return {KEYS[1], 7}", ["key"], []), ["key", 7]);
const flagged = "#!lua flags=allow-key-locking\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])";
const script = redis.createScript(flagged);
assert.equal(await script.exec(["js:s"], ["2"]), 2);
assert.equal(await script.evalsha(["js:s"], ["3"]), 5);
assert.equal(await script.exec(["js:s"], ["1"]), 6);
const sha = await redis.scriptLoad(flagged);
assert.equal(sha, script.sha1);

// errors surface as exceptions with the Redis text
await assert.rejects(redis.incr("js:k"), /ERR value is not an integer/);
await assert.rejects(redis.evalsha("0".repeat(40), [], []), /NOSCRIPT/);

// read-only token
const ro = new Redis({ url, token: process.env.GATEWAY_RO_TOKEN });
assert.equal(await ro.get("js:k"), "hello");
await assert.rejects(ro.set("js:k", "nope"), /NOPERM/);

// wrong token
const bad = new Redis({ url, token: "wrong" });
await assert.rejects(bad.get("js:k"), /Unauthorized/);

console.log("ok");
