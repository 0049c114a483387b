// The official `openai` npm package against MageAgent's /v1, as a Node user would call it.
//   node openai_sdk.js BASE_URL KEY
// Runs each scenario and prints one JSON object with what it saw (the Python test asserts).
const OpenAI = require('openai');

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const sim = (d) => `[[sim ${JSON.stringify(d)}]]`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const out = {};
  out.models = [];
  for await (const model of client.models.list()) out.models.push(model.id);

  const plain = await client.chat.completions.create({
    model: 'gpt-4o-mini', messages: [{ role: 'user', content: `hi ${sim({ text: 'Hello from Node.' })}` }],
  });
  out.plain = { content: plain.choices[0].message.content, usage: plain.usage, id: plain.id };

  const stream = await client.chat.completions.create({
    model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: `count ${sim({ tokens: 12, interval_ms: 5 })}` }],
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content || '';
    if (chunk.usage) usage = chunk.usage;
  }
  out.streamed = { text, usage };

  const history = [
    { role: 'user', content: 'My name is Ada.' }, { role: 'assistant', content: 'Noted.' },
    { role: 'user', content: `Name? ${sim({ echo: true })}` },
  ];
  const echoed = await client.chat.completions.create({
    model: 'gpt-4o-mini', messages: history, temperature: 0.5, seed: 3, max_tokens: 200,
    response_format: { type: 'json_schema', json_schema: { name: 'person', schema: { type: 'object' } } },
  });
  out.echoed = JSON.parse(echoed.choices[0].message.content);

  const tools = [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }];
  const called = await client.chat.completions.create({
    model: 'gpt-4o-mini', tools,
    messages: [{ role: 'user', content: `Look up. ${sim({ tool_calls: [{ name: 'lookup', arguments: { q: 'x' } }] })}` }],
  });
  out.toolCall = { finish: called.choices[0].finish_reason, calls: called.choices[0].message.tool_calls };

  const auto = await client.chat.completions.create({
    model: 'auto', messages: [{ role: 'user', content: `hi ${sim({ tokens: 2 })}` }],
  });
  out.auto = auto.model;

  // Background: create, poll, stream, break off, resume with starting_after.
  const created = await client.responses.create({
    model: 'gpt-4o-mini', background: true, input: `Write. ${sim({ tokens: 40, interval_ms: 20 })}`,
  });
  out.background = { createdStatus: created.status };
  const first = [];
  const live = await client.responses.retrieve(created.id, { stream: true });
  for await (const event of live) {
    first.push(event);
    if (event.type === 'response.output_text.delta' && first.length > 6) break;
  }
  const rest = [];
  const resumed = await client.responses.retrieve(created.id, {
    stream: true, starting_after: first[first.length - 1].sequence_number,
  });
  for await (const event of resumed) rest.push(event);
  const events = first.concat(rest);
  let polled = await client.responses.retrieve(created.id);
  while (polled.status !== 'completed') { await sleep(100); polled = await client.responses.retrieve(created.id); }
  out.background.sequence = events.map((e) => e.sequence_number);
  out.background.text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
  out.background.last = events[events.length - 1].type;
  out.background.outputText = polled.output_text;

  const long = await client.responses.create({
    model: 'gpt-4o-mini', background: true, input: `Long. ${sim({ tokens: 400, interval_ms: 50 })}`,
  });
  out.cancelled = (await client.responses.cancel(long.id)).status;

  try {
    await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] });
  } catch (err) {
    out.error = { status: err.status, code: err.code, type: err.type };
  }
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.log(JSON.stringify({ crashed: String(err && err.stack || err) })); process.exit(1); });
