// A Deno peer for tests/test_deno_file.py: opens the KV file given as the
// first argument and answers one JSON command per stdin line with one JSON
// line on stdout, so one Deno process serves a whole test module.
const kv = await Deno.openKv(Deno.args[0]);

type Cmd = { op: string; key?: Deno.KvKey; versionstamp?: string | null; value?: unknown };

function plain(v: unknown): unknown {
  // Typed JSON for what JSON lacks, read back by the Python side.
  if (typeof v === "bigint") return { bigint: v.toString() };
  if (v instanceof Deno.KvU64) return { u64: v.value.toString() };
  if (v instanceof Uint8Array) return { bytes: Array.from(v) };
  if (v instanceof Date) return { date: v.getTime() };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}

async function handle(cmd: Cmd): Promise<unknown> {
  switch (cmd.op) {
    case "write": {
      await kv.set(["d", "obj"], {
        name: "ada", n: 1, big: 10n, when: new Date(1700000000123), tags: ["a"],
        raw: new Uint8Array([1, 2]), nothing: null,
      });
      await kv.set(["d", "u64"], new Deno.KvU64(5n));
      await kv.atomic().sum(["d", "u64"], 3n).commit();
      await kv.set(["d", "exp"], "soon", { expireIn: 60_000 });
      await kv.set(["d", "gone"], "now", { expireIn: 1 });
      const first = await kv.atomic().check({ key: ["d", "new"], versionstamp: null })
        .set(["d", "new"], "x").commit();
      const second = await kv.atomic().check({ key: ["d", "new"], versionstamp: null })
        .set(["d", "new"], "y").commit();
      await kv.enqueue({ job: 1 }, { keysIfUndelivered: [["d", "dead"]] });
      return { first: first.ok, second: second.ok };
    }
    case "list": {
      const out = [];
      for await (const e of kv.list({ prefix: [] })) {
        out.push({ key: plain(e.key), value: plain(e.value), versionstamp: e.versionstamp });
      }
      return out;
    }
    case "check": {
      const r = await kv.atomic().check({ key: cmd.key!, versionstamp: cmd.versionstamp ?? null })
        .set(cmd.key!, cmd.value).commit();
      return { ok: r.ok, versionstamp: r.ok ? r.versionstamp : null };
    }
    case "listen": {
      // The first message delivered to Deno's listener, and how long it took.
      const t0 = Date.now();
      const got = await new Promise((resolve) => kv.listenQueue((m) => resolve(m)));
      return { value: plain(got), ms: Date.now() - t0 };
    }
  }
  throw new Error(`unknown op ${cmd.op}`);
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
let buffer = "";
for await (const chunk of Deno.stdin.readable) {
  buffer += decoder.decode(chunk);
  let end;
  while ((end = buffer.indexOf("\n")) >= 0) {
    const line = buffer.slice(0, end);
    buffer = buffer.slice(end + 1);
    let reply;
    try {
      reply = await handle(JSON.parse(line));
    } catch (e) {
      reply = { error: String(e) };
    }
    await Deno.stdout.write(encoder.encode(JSON.stringify(reply) + "\n"));
  }
}
kv.close();
Deno.exit(0);
