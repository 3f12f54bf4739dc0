// Drives ComfyUI's graph editor (the real front end, served by a real server) in headless Chromium.
//
//   node editor.mjs JOB.json   ->   prints one JSON result on stdout
//
// JOB: {url, out, chromium, workflows: [{name, ui, queue, short, watch, timeout_ms}]}, where `ui` is a
// UI-format workflow, `short` maps node type -> {widget: value} applied in the editor before
// queueing, and `out` receives a screenshot per workflow. For every workflow the result holds what
// the page saw: node types it could not resolve, widgets whose value the editor rejects, the API
// prompt it converts the graph into (app.graphToPrompt), and, when queued, how the run ended and
// which images the page shows; with `watch` (a node type), the previews and progress texts that node
// received while running, with a screenshot at each of the first three previews. The node definitions of
// the Pro-GRPO pack come from the page too.
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
mkdirSync(job.out, { recursive: true });

const browser = await chromium.launch({
  executablePath: job.chromium || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const result = { workflows: {}, console_errors: [], node_defs: null };

async function openEditor() {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on('console', (message) => {
    if (message.type() === 'error') result.console_errors.push(message.text());
  });
  await page.goto(job.url, { waitUntil: 'networkidle', timeout: 120000 });
  await page.waitForFunction(() => window.app && window.app.graph && window.app.api && window.LiteGraph,
    null, { timeout: 120000 });
  return page;
}

// What the editor thinks of the loaded graph: unknown node types and widgets it would draw red.
function inspectGraph() {
  const registered = window.LiteGraph.registered_node_types;
  const missing = [];
  const invalid = [];
  for (const node of window.app.graph.nodes) {
    if (node.type !== 'Note' && !(node.type in registered)) missing.push(node.type);
    for (const widget of node.widgets || []) {
      const options = widget.options || {};
      if (widget.type === 'combo') {
        const values = typeof options.values === 'function' ? options.values() : options.values;
        if (Array.isArray(values) && !values.includes(widget.value)) {
          invalid.push(`${node.type}.${widget.name}=${JSON.stringify(widget.value)}`);
        }
      } else if (widget.type === 'number') {
        if (typeof widget.value !== 'number' || Number.isNaN(widget.value)
            || (options.min !== undefined && widget.value < options.min)
            || (options.max !== undefined && widget.value > options.max)) {
          invalid.push(`${node.type}.${widget.name}=${JSON.stringify(widget.value)}`);
        }
      }
    }
  }
  return { missing, invalid, node_count: window.app.graph.nodes.length };
}

// Set the `short` widget values (node type -> {widget: value}) in the loaded graph.
async function applyShort(page, short) {
  await page.evaluate((short) => {
    for (const node of window.app.graph.nodes) {
      for (const [name, value] of Object.entries(short[node.type] || {})) {
        const widget = (node.widgets || []).find((w) => w.name === name);
        if (!widget) throw new Error(`${node.type} has no widget ${name}`);
        widget.value = value;
      }
    }
  }, short);
}

async function queueAndWait(page, short, timeoutMs) {
  await applyShort(page, short);
  return page.evaluate(async ({ timeoutMs }) => {
    const api = window.app.api;
    const finished = new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ status: 'timeout' }), timeoutMs);
      const done = (status) => (event) => { clearTimeout(timer); resolve({ status, detail: event.detail }); };
      api.addEventListener('execution_success', done('success'));
      api.addEventListener('execution_error', done('error'));
      api.addEventListener('execution_interrupted', done('interrupted'));
    });
    await window.app.queuePrompt(0, 1);
    const outcome = await finished;
    return outcome;
  }, { timeoutMs }).then(async (outcome) => ({ ...outcome, shown: await shownImages(page) }));
}

// The images the page shows per node after a run (executed messages come before success, and the page
// loads images lazily: wait until every node with image outputs shows one, at most 15 s).
async function shownImages(page) {
  await page.waitForTimeout(1500);
  await page.waitForFunction(() => window.app.graph.nodes.every((node) => {
    const images = window.app.nodeOutputs?.[String(node.id)]?.images?.length || 0;
    return !images || (node.imgs || []).some((img) => img.complete && img.naturalWidth > 0);
  }), null, { timeout: 15000 }).catch(() => {});
  return page.evaluate(() => {
    const shown = {};
    for (const node of window.app.graph.nodes) {
      const outputs = window.app.nodeOutputs?.[String(node.id)];
      const images = outputs?.images?.length || 0;
      const loaded = (node.imgs || []).filter((img) => img.complete && img.naturalWidth > 0).length;
      if (images || loaded) shown[node.id] = { type: node.type, images, loaded };
    }
    return shown;
  });
}

// Queue, and while the run goes, record what the page receives for the node of type `watchType`: its
// preview images (b_preview_with_metadata) and progress texts; screenshot the page at the first three previews.
async function queueAndWatch(page, short, timeoutMs, watchType, shotPrefix) {
  await applyShort(page, short);
  await page.evaluate(async ({ watchType }) => {
    const target = window.app.graph.nodes.find((node) => node.type === watchType);
    if (!target) throw new Error(`no ${watchType} node to watch`);
    const state = { node: String(target.id), previews: [], texts: [], done: null };
    window.__progrpoLive = state;
    const api = window.app.api;
    api.addEventListener('b_preview_with_metadata', async ({ detail }) => {
      if (String(detail.displayNodeId ?? detail.nodeId) !== state.node) return;
      const bytes = new Uint8Array(await detail.blob.arrayBuffer());
      let hash = 0;
      for (const byte of bytes) hash = (hash * 31 + byte) >>> 0;
      state.previews.push({ size: bytes.length, hash });
    });
    api.addEventListener('progress_text', ({ detail }) => {
      if (String(detail.nodeId) === state.node) state.texts.push(detail.text);
    });
    for (const kind of ['execution_success', 'execution_error', 'execution_interrupted']) {
      api.addEventListener(kind, () => { state.done = kind; });
    }
    await window.app.queuePrompt(0, 1);
  }, { watchType });
  const shots = [];
  const started = Date.now();
  let seen = 0;
  for (;;) {
    const count = await page.evaluate(() => window.__progrpoLive.previews.length);
    if (count > seen && shots.length < 3) {
      seen = count;
      await page.waitForTimeout(300); // the node draws the new image
      const path = `${shotPrefix}_live_${shots.length + 1}.png`;
      await focusAndShoot(page, watchType, path);
      shots.push(path);
    }
    if (await page.evaluate(() => window.__progrpoLive.done) || Date.now() - started > timeoutMs) break;
    await page.waitForTimeout(200);
  }
  const state = await page.evaluate(() => window.__progrpoLive);
  // the live shots zoomed in on one node; the canvas draws (and loads the images of) visible nodes only
  await page.evaluate(async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); });
  const shown = await shownImages(page);
  // the finished Train Loop and the evaluation table, at full size
  for (const [match, label] of [['ProGRPOTrainLoop', 'train_loop'], ['Evaluation table', 'evaluation_table']]) {
    const path = `${shotPrefix}_${label}.png`;
    if (await focusAndShoot(page, match, path)) shots.push(path);
  }
  return { status: state.done ? state.done.replace('execution_', '') : 'timeout', previews: state.previews,
           texts: state.texts, shots, shown };
}

// Screenshot the first node whose type or title is `match` at 100% zoom, centred and brought to the front,
// cropped to the node (false when there is none).
async function focusAndShoot(page, match, path) {
  const clip = await page.evaluate((match) => {
    const canvas = window.app.canvas;
    const node = window.app.graph.nodes.find((candidate) => candidate.type === match || candidate.title === match);
    if (!node) return null;
    const box = canvas.canvas.getBoundingClientRect();
    const title = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
    canvas.ds.scale = 1;
    canvas.bringToFront?.(node);
    // a node taller than the view shows its lower part (where outputs, previews and progress text are)
    const visible = Math.min(node.size[1] + title, box.height - 120);
    const top = node.pos[1] + node.size[1] - visible;
    canvas.ds.offset[0] = (box.width - node.size[0]) / 2 - node.pos[0];
    canvas.ds.offset[1] = 100 - top;
    canvas.setDirty(true, true);
    const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0], top]);
    return { x: Math.max(0, box.left + x - 4), y: Math.max(0, box.top + y - 4),
             width: node.size[0] + 8, height: visible + 8 };
  }, match);
  if (clip) {
    await page.waitForTimeout(500);
    await page.screenshot({ path, clip });
  }
  return Boolean(clip);
}

async function fitAndShoot(page, path) {
  // The editor's own "fit view" command (what the keyboard shortcut "." runs).
  await page.evaluate(async () => {
    await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
  });
  await page.waitForTimeout(700);
  await page.screenshot({ path });
}

try {
  const page = await openEditor();
  // The pack's node definitions as the editor has them (not a list written in the test).
  result.node_defs = await page.evaluate(async () => {
    const defs = await window.app.api.getNodeDefs();
    const ours = Object.values(defs).filter((def) => String(def.python_module || '').endsWith('comfyui-progrpo'));
    return ours.map((def) => {
      const node = window.LiteGraph.createNode(def.name);
      const widgets = Object.fromEntries((node?.widgets || []).map((w) => [w.name, w.value]));
      return { name: def.name, display_name: def.display_name, category: def.category, input: def.input,
               output_tooltips: def.output_tooltips, widgets, description: def.description };
    });
  });
  for (const workflow of job.workflows) {
    const entry = {};
    await page.evaluate(async (graph) => { await window.app.loadGraphData(graph); }, workflow.ui);
    await page.waitForTimeout(500);
    Object.assign(entry, await page.evaluate(inspectGraph));
    entry.dialogs = await page.evaluate(() => Array.from(document.querySelectorAll('.p-dialog'))
      .map((dialog) => (dialog.textContent || '').slice(0, 200)));
    entry.prompt = (await page.evaluate(async () => (await window.app.graphToPrompt()).output));
    if (workflow.queue && workflow.watch) {
      entry.run = await queueAndWatch(page, workflow.short || {}, workflow.timeout_ms || 300000, workflow.watch,
        join(job.out, workflow.name));
    } else if (workflow.queue) {
      entry.run = await queueAndWait(page, workflow.short || {}, workflow.timeout_ms || 300000);
    }
    entry.screenshot = join(job.out, `${workflow.name}.png`);
    await fitAndShoot(page, entry.screenshot);
    result.workflows[workflow.name] = entry;
  }
} catch (error) {
  result.error = String(error && error.stack || error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
