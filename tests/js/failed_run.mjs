// One request whose run fails (rlm serve answers 502 with `x-should-retry: false`), by the client
// named in argv[2]; prints the error message. tests/test_serve_js_clients.py counts the model calls.
import OpenAI from "openai";
import { generateText } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

const { RLM_URL, RLM_TOKEN } = process.env;
const baseURL = `${RLM_URL}/v1`;
const model = createOpenAICompatible({ name: "rlm", baseURL, apiKey: RLM_TOKEN })("rlm");
const ask = {
  "openai": () => new OpenAI({ baseURL, apiKey: RLM_TOKEN }).chat.completions.create(
    { model: "rlm", messages: [{ role: "user", content: "q" }], context: "x" }),
  "ai-sdk": () => generateText({ model, prompt: "q, asked by the AI SDK with its default retries" }),
  "ai-sdk maxRetries 0": () => generateText({ model, prompt: "q", maxRetries: 0 }),
}[process.argv[2]];
try {
  await ask();
  console.log(JSON.stringify({ error: null }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error.message) }));
}
