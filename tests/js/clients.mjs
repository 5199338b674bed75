// The npm clients of docs/SERVING.md's table, each in its default configuration, against the
// `rlm serve` at RLM_URL; tests/test_serve_js_clients.py starts the server and checks what this
// prints: one JSON object, each client's answer by name.
import OpenAI from "openai";
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";
import { generateText, jsonSchema, Output, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

const { RLM_URL, RLM_TOKEN, RLM_DOCUMENT, RLM_QUESTION } = process.env;
const baseURL = `${RLM_URL}/v1`;
const prompt = `${RLM_DOCUMENT}\n\n${RLM_QUESTION}`;
const messages = [{ role: "user", content: prompt }];

async function openaiPackage() {
  const client = new OpenAI({ baseURL, apiKey: RLM_TOKEN });
  const chat = await client.chat.completions.create({ model: "rlm", messages });
  let chatStream = "";
  for await (const chunk of await client.chat.completions.create({ model: "rlm", messages, stream: true })) {
    chatStream += chunk.choices[0]?.delta?.content ?? "";
  }
  const responses = await client.responses.create({ model: "rlm", input: prompt });
  let responsesStream = "";
  for await (const event of await client.responses.create({ model: "rlm", input: prompt, stream: true })) {
    if (event.type === "response.output_text.delta") responsesStream += event.delta;
  }
  const Server = z.object({ name: z.string() });
  const parsed = await client.chat.completions.parse(
    { model: "rlm", messages, response_format: zodResponseFormat(Server, "server") });
  const typed = await client.responses.parse({ model: "rlm", input: prompt, text: { format: zodTextFormat(Server, "server") } });
  return {
    "openai chat.completions.parse": parsed.choices[0].message.parsed.name,
    "openai responses.parse": typed.output_parsed.name,
    "openai chat.completions": chat.choices[0].message.content,
    "openai chat.completions stream": chatStream,
    "openai responses": responses.output_text,
    "openai responses stream": responsesStream,
  };
}

const SERVER = jsonSchema({
  type: "object", properties: { name: { type: "string" } }, required: ["name"], additionalProperties: false,
});

async function aiSdk() {
  const openai = createOpenAI({ baseURL, apiKey: RLM_TOKEN }); // openai("rlm"): the Responses API
  const compatible = createOpenAICompatible({ name: "rlm", baseURL, apiKey: RLM_TOKEN }); // chat completions
  // Its default sends an output schema as bare JSON mode ({type: "json_object"}), with a warning and
  // without the schema; supportsStructuredOutputs: true sends the schema (json_schema).
  const structured = createOpenAICompatible({ name: "rlm", baseURL, apiKey: RLM_TOKEN, supportsStructuredOutputs: true });
  const answers = {};
  for (const [name, model, typedModel] of [["@ai-sdk/openai", openai("rlm"), openai("rlm")],
    ["@ai-sdk/openai-compatible", compatible("rlm"), structured("rlm")]]) {
    answers[`${name} generateText`] = (await generateText({ model, prompt })).text;
    answers[`${name} streamText`] = await streamText({ model, prompt }).text;
    const typed = await generateText({ model: typedModel, prompt, output: Output.object({ schema: SERVER }) });
    answers[`${name} Output.object`] = typed.output.name;
  }
  return answers;
}

console.log(JSON.stringify({ ...(await openaiPackage()), ...(await aiSdk()) }));
