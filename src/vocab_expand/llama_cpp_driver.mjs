// Drives real llama.cpp (the prebuilt CPU binaries of node-llama-cpp) for vocab_expand.engines.
// Usage: node llama_cpp_driver.mjs NODE_ENGINE_DIR REQUEST.json > answer.json
// (a file, not stdin: reading a large request from a pipe can fail with EAGAIN)
// request: {"model": PATH, "texts": [STRING...], "generate": [{"ids": [INT...], "n": INT}...], "threads": INT}
// answer:  {"ids": [[INT...]...], "generated": [[INT...]...]}
// Texts are tokenized without special tokens (no BOS); generation is greedy (temperature 0) from the given ids.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const engineDir = process.argv[2];
const entry = join(engineDir, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
const request = JSON.parse(readFileSync(process.argv[3], "utf8"));
const generate = request.generate ?? [];

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
const model = await llama.loadModel({ modelPath: request.model, vocabOnly: generate.length === 0 });
const ids = (request.texts ?? []).map((text) => Array.from(model.tokenize(text, false)));

const generated = [];
if (generate.length > 0) {
  const longest = Math.max(...generate.map((g) => g.ids.length + g.n));
  const context = await model.createContext({ contextSize: Math.max(256, longest + 8), threads: request.threads ?? 2 });
  for (const job of generate) {
    const sequence = context.getSequence();
    const out = [];
    for await (const token of sequence.evaluate(job.ids, { temperature: 0 })) {
      out.push(token);
      if (out.length >= job.n) break;
    }
    generated.push(out);
    sequence.dispose();
  }
  await context.dispose();
}
process.stdout.write(JSON.stringify({ ids, generated }));
await model.dispose();
await llama.dispose();
