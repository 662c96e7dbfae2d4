// Apollo in the browser: the exported generator (apollo.onnx, onnxruntime-web) chained over a
// seeded noise tape, decoded as Python decodes (apollo.roll.PianoRoll.decode), played through
// FluidSynth (js-synthesizer) in an AudioWorklet. apollo.json says how: see docs/generate.md,
// "Exporting to ONNX", and docs/web.md.
"use strict";

(() => {
  const SILENT = 0, HELD = 1, ONSET = 2;
  const VELOCITY = 80;  // as PianoRoll.to_midi
  const AHEAD_STEPS = 384;  // generate this far past the playhead
  const HORIZON_MS = 400;  // schedule notes this far ahead of the sound
  const START_DELAY_MS = 150;
  const STEP_PX = 4;  // canvas pixels per step

  // -- noise: a seeded tape of standard normal columns [C, H] ------------------------------------

  function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6D2B79F5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  class NoiseTape {
    // columns(j) for j = 0, 1, 2, ...: Float32Array(C * H), index c * H + h, drawn in order.
    constructor(seed, size) {
      this.size = size;
      this.random = mulberry32(seed);
      this.columns = new Map();
      this.drawn = 0;
    }
    gaussian() {  // Box-Muller
      let u = 0;
      while (u === 0) u = this.random();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.random());
    }
    column(j) {
      while (this.drawn <= j) {
        const column = new Float32Array(this.size);
        for (let i = 0; i < this.size; i++) column[i] = this.gaussian();
        this.columns.set(this.drawn++, column);
      }
      return this.columns.get(j);
    }
    forget(before) { for (const j of this.columns.keys()) if (j < before) this.columns.delete(j); }
  }

  class GivenTape {
    // A tape handed in (tests): Float32Array of n columns, column j at [j * size, (j + 1) * size).
    constructor(values, size) { this.values = values; this.size = size; this.length = values.length / size; }
    column(j) {
      if (j >= this.length) throw new Error(`the tape has ${this.length} columns, asked for column ${j}`);
      return this.values.subarray(j * this.size, (j + 1) * this.size);
    }
    forget() {}
  }

  // -- decoding, exactly as PianoRoll.decode ---------------------------------------------------

  // Cells [pitch][step] (Uint8Array, pitch-major) from the two planes [pitch][step] of n steps.
  // Python compares float32 probabilities with the thresholds in float32 (Math.fround here).
  function decodePlanes(sounding, onset, nPitches, nSteps, decoding) {
    const threshold = Math.fround(decoding.threshold);
    const onsetThreshold = Math.fround(decoding.onset_threshold ?? decoding.threshold);
    const minLength = decoding.min_length;
    const cells = new Uint8Array(nPitches * nSteps);
    for (let i = 0; i < nPitches * nSteps; i++) cells[i] = sounding[i] > threshold ? HELD : SILENT;
    // fill: a step where nothing sounds sounds its most probable pitch (the lowest of equals) above `fill`
    if (decoding.fill != null) {
      const fill = Math.fround(decoding.fill);
      for (let t = 0; t < nSteps; t++) {
        let top = 0;
        let silent = true;
        for (let p = 0; p < nPitches; p++) {
          if (cells[p * nSteps + t]) { silent = false; break; }
          if (sounding[p * nSteps + t] > sounding[top * nSteps + t]) top = p;
        }
        if (silent && sounding[top * nSteps + t] > fill) cells[top * nSteps + t] = HELD;
      }
    }
    for (let p = 0; p < nPitches; p++) {
      const row = p * nSteps;
      // drop_short_runs: runs of sounding cells shorter than min_length stay silent
      if (minLength > 1) {
        let t = 0;
        while (t < nSteps) {
          if (!cells[row + t]) { t++; continue; }
          let end = t;
          while (end < nSteps && cells[row + end]) end++;
          if (end - t < minLength) cells.fill(SILENT, row + t, row + end);
          t = end;
        }
      }
      // a sounding cell starts a note where its onset probability is above onset_threshold,
      // or where the cell before it is silent
      for (let t = 0; t < nSteps; t++) {
        if (!cells[row + t]) continue;
        if ((onset && onset[row + t] > onsetThreshold) || t === 0 || !cells[row + t - 1]) cells[row + t] = ONSET;
      }
    }
    return cells;
  }

  // -- chaining windows, as apollo.generate.sample_probabilities ----------------------------------

  function fadeIn(chain) {  // the later window's weights over its first `overlap` steps (float32)
    const fade = chain.overlap - 2 * chain.edge;
    const w = new Float32Array(chain.overlap);
    for (let i = 0; i < fade; i++) w[chain.edge + i] = 0.5 - 0.5 * Math.cos(Math.PI * (i + 0.5) / fade);
    w.fill(1, chain.edge + fade);
    return w;
  }

  class Stream {
    // Endless decoded steps: next() runs one more window and returns the steps it finished,
    // each a Uint8Array(n_pitches) of SILENT / HELD / ONSET.
    constructor(session, spec, tape) {
      this.session = session;
      this.spec = spec;
      this.tape = tape;
      this.chain = spec.chaining;
      [, this.C, this.H, this.W] = spec.input.shape;
      this.P = spec.grid.n_pitches;
      this.fade = fadeIn(this.chain);
      this.k = 0;  // windows run
      this.base = 0;  // step of probs' first column
      this.sounding = [];  // per step from `base`: Float32Array(P), summed over windows
      this.onset = [];
      this.final = 0;  // steps whose probabilities are complete
      this.emitted = 0;  // steps decoded and handed out
      const m = spec.decoding.min_length;
      this.lookahead = m - 1;  // a cell's fate depends on m - 1 steps either side,
      this.context = 2 * m;  // and its onset on the cell before it
    }

    windowNoise(k) {
      const { C, H, W } = this;
      const noise = new Float32Array(C * H * W);
      for (let w = 0; w < W; w++) {
        const column = this.tape.column(k * this.chain.hop_columns + w);
        for (let ch = 0; ch < C * H; ch++) noise[ch * W + w] = column[ch];
      }
      return noise;
    }

    // [2][P][window] from one window's noise; key and style (where the model has them) are read
    // from `whole`: the piece's first window, so a piece keeps one key and one character
    async probabilities(noise, whole = noise) {
      const shape = [1, this.C, this.H, this.W];
      const inputs = { [this.spec.input.name]: new ort.Tensor("float32", noise, shape) };
      if (this.spec.whole) inputs[this.spec.whole.name] = new ort.Tensor("float32", whole, shape);
      const output = await this.session.run(inputs);
      return output[this.spec.output.name].data;
    }

    async next() {
      const { chain, P } = this;
      const k = this.k++;
      const noise = this.windowNoise(k);
      if (k === 0) this.whole = noise;
      const probs = await this.probabilities(noise, this.whole);
      this.tape.forget(this.k * chain.hop_columns);
      const window = chain.window, start = k * chain.hop;
      const planes = this.spec.encoding === "onset" ? 2 : 1;
      for (let t = 0; t < window; t++) {
        const step = start + t - this.base;
        // the first window has no fade-in; every window fades out, since another always follows
        let w = 1;
        if (k > 0 && t < chain.overlap) w = this.fade[t];
        if (t >= window - chain.overlap) w = this.fade[window - 1 - t];
        w = Math.fround(w);
        if (step >= this.sounding.length) {
          this.sounding.push(new Float32Array(P));
          this.onset.push(new Float32Array(P));
        }
        const s = this.sounding[step], o = this.onset[step];
        for (let p = 0; p < P; p++) {
          s[p] = Math.fround(s[p] + Math.fround(probs[p * window + t] * w));
          if (planes === 2) o[p] = Math.fround(o[p] + Math.fround(probs[(P + p) * window + t] * w));
        }
      }
      this.final = start + window - chain.overlap;
      return this.decodeUpTo(this.final - this.lookahead);
    }

    decodeUpTo(end) {
      const { P } = this;
      const from = Math.max(this.base, this.emitted - this.context);
      const n = this.final - from;
      const sounding = new Float32Array(P * n), onset = new Float32Array(P * n);
      for (let i = 0; i < n; i++) {
        const s = this.sounding[from + i - this.base], o = this.onset[from + i - this.base];
        for (let p = 0; p < P; p++) { sounding[p * n + i] = s[p]; onset[p * n + i] = o[p]; }
      }
      const cells = decodePlanes(sounding, this.spec.encoding === "onset" ? onset : null, P, n, this.spec.decoding);
      const steps = [];
      for (let t = this.emitted; t < end; t++) {
        const column = new Uint8Array(P);
        for (let p = 0; p < P; p++) column[p] = cells[p * n + t - from];
        steps.push(column);
      }
      this.emitted = Math.max(this.emitted, end);
      const drop = Math.max(0, this.emitted - this.context - this.base);  // forget what no decode needs
      this.sounding.splice(0, drop);
      this.onset.splice(0, drop);
      this.base += drop;
      return steps;
    }
  }

  // -- notes from decoded steps, and MIDI ------------------------------------------------------

  class Notes {
    // Notes {pitch, start, end} (steps) from decoded steps in order; end is null while a note sounds.
    constructor(lowestPitch, nPitches) {
      this.lowest = lowestPitch;
      this.open = new Array(nPitches).fill(null);
      this.all = [];  // in order of start
      this.ended = [];  // in order of end, for scheduling note-offs
      this.steps = 0;
    }
    add(column) {
      const t = this.steps++;
      for (let p = 0; p < column.length; p++) {
        const cell = column[p], open = this.open[p];
        if (open && cell !== HELD) { open.end = t; this.ended.push(open); this.open[p] = null; }
        if (cell === ONSET || (cell === HELD && !this.open[p])) {
          const note = { pitch: this.lowest + p, start: t, end: null };
          this.open[p] = note;
          this.all.push(note);
        }
      }
    }
  }

  function varLength(n) {
    const bytes = [n & 0x7f];
    while ((n >>= 7)) bytes.unshift((n & 0x7f) | 0x80);
    return bytes;
  }

  // A type-0 standard MIDI file of the notes (steps) that sound before step `until`.
  function midiFile(notes, until, stepsPerBeat, tempo, program) {
    const ticksPerStep = 480 / stepsPerBeat;
    const events = [];
    for (const n of notes) {
      if (n.start >= until) continue;
      const end = Math.min(n.end ?? until, until);
      events.push([n.start * ticksPerStep, 1, [0x90, n.pitch, VELOCITY]]);
      events.push([end * ticksPerStep, 0, [0x80, n.pitch, 0]]);
    }
    events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const usPerBeat = Math.round(60e6 / tempo);
    const track = [0, 0xff, 0x51, 3, (usPerBeat >> 16) & 0xff, (usPerBeat >> 8) & 0xff, usPerBeat & 0xff,
                   0, 0xc0, program];
    let now = 0;
    for (const [tick, , bytes] of events) { track.push(...varLength(tick - now), ...bytes); now = tick; }
    track.push(...varLength(Math.max(0, until * ticksPerStep - now)), 0xff, 0x2f, 0);
    const header = [0x4d, 0x54, 0x68, 0x64, 0, 0, 0, 6, 0, 0, 0, 1, 480 >> 8, 480 & 0xff];
    const length = track.length;
    return new Uint8Array([...header, 0x4d, 0x54, 0x72, 0x6b,
                           (length >>> 24) & 0xff, (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff, ...track]);
  }

  // -- the page ---------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const app = {
    spec: null, session: null, stream: null, notes: null, columns: new Map(),
    seed: 0, program: 0, tempo: 100, playing: false, generating: null,
    audio: null, synth: null, sequencer: null,
    anchorTick: 0, anchorStep: 0, previous: null, scheduledUntil: 0, tick0: 0, time0: 0,
    nextOn: 0, nextOff: 0, playStep: 0, windowTimes: [], sent: [],
  };

  function status(text) { $("status").textContent = text; }

  function newStream(seed) {
    app.seed = seed;
    $("seed-value").textContent = String(seed);
    app.stream = new Stream(app.session, app.spec, new NoiseTape(seed, app.stream ? app.stream.C * app.stream.H
      : app.spec.input.shape[1] * app.spec.input.shape[2]));
    app.notes = new Notes(app.spec.grid.lowest_pitch + keyMove(seed), app.spec.grid.n_pitches);
    app.columns = new Map();
    app.nextOn = app.nextOff = 0;
    app.playStep = 0;
  }

  function keyMove(seed) {  // a model trained in one key plays in one of the keys its corpus had
    const moves = app.spec.key_moves;
    return moves && moves.length ? moves[seed % moves.length] : 0;
  }

  async function generateOne() {
    const began = performance.now();
    const steps = await app.stream.next();
    app.windowTimes.push(performance.now() - began);
    for (const column of steps) {
      app.columns.set(app.notes.steps, column);
      app.notes.add(column);
    }
  }

  async function generateAhead() {
    while (app.notes.steps < app.playStep + AHEAD_STEPS) await generateOne();
  }

  function keepAhead() {  // one generation loop at a time
    if (!app.generating) app.generating = generateAhead().finally(() => { app.generating = null; });
    return app.generating;
  }

  const stepMs = () => 60000 / (app.tempo * app.spec.grid.steps_per_beat);
  const tickNow = () => app.tick0 + (app.audio.currentTime - app.time0) * 1000;
  // The music's time: steps to sequencer ticks (ms), linear from the anchor on, and before it at
  // the tempo that held before the last change.
  function stepAt(tick) {
    const p = app.previous;
    return p && tick < app.anchorTick ? p.step + (tick - p.tick) / p.ms : app.anchorStep + (tick - app.anchorTick) / stepMs();
  }
  function tickAt(step) {
    const p = app.previous;
    return p && step < app.anchorStep ? p.tick + (step - p.step) * p.ms : app.anchorTick + (step - app.anchorStep) * stepMs();
  }

  async function startAudio() {
    if (app.audio) return;
    status("Starting the synthesizer…");
    const audio = new AudioContext();
    await audio.audioWorklet.addModule("vendor/libfluidsynth-2.4.6.js");
    await audio.audioWorklet.addModule("vendor/js-synthesizer.worklet.min.js");
    await JSSynth.waitForReady();
    // Loading a SoundFont from memory, FluidSynth logs at error level that its file functions are
    // stubs: quiet its errors while it loads, then keep them.
    JSSynth.disableLogging(JSSynth.LogLevel.Error);
    const synth = new JSSynth.AudioWorkletNodeSynthesizer();
    synth.init(audio.sampleRate);
    app.analyser = audio.createAnalyser();  // the level the page shows, and tests read
    synth.createAudioNode(audio).connect(app.analyser);
    app.analyser.connect(audio.destination);
    const font = await (await fetch("soundfont.sf2")).arrayBuffer();
    await synth.loadSFont(font);
    JSSynth.disableLogging(JSSynth.LogLevel.Warning);
    const sequencer = await synth.createSequencer();
    await sequencer.registerSynthesizer(synth);
    synth.midiProgramChange(0, app.program);
    app.synth = synth;
    app.sequencer = sequencer;
    app.tick0 = await sequencer.getTick();
    app.time0 = audio.currentTime;
    app.audio = audio;
  }

  function schedule() {
    if (!app.playing) return;
    const now = tickNow();
    app.playStep = Math.max(0, stepAt(now));
    const until = stepAt(now + HORIZON_MS);
    const notes = app.notes, seq = app.sequencer;
    // Note-ons and note-offs in the order of their steps, so that a short note that starts and ends
    // inside one run (a late run covers many steps) is struck before it is ended; at the same step
    // the note-off first, so that a note struck again where the last one ends is ended, then struck.
    for (;;) {
      const off = app.nextOff < notes.ended.length && notes.ended[app.nextOff].end < until ? notes.ended[app.nextOff] : null;
      const on = app.nextOn < notes.all.length && notes.all[app.nextOn].start < until ? notes.all[app.nextOn] : null;
      if (off && (!on || off.end <= on.start)) {
        app.nextOff++;
        // after its note-on even when the tempo rose in between, so that no note is left hanging
        if (off.onTick === undefined || off.offTick !== undefined) continue;  // never struck, or already sent
        off.offTick = Math.max(Math.round(tickAt(off.end)), off.onTick + 1);
        seq.sendEventAt({ type: "noteoff", channel: 0, key: off.pitch }, off.offTick, true);
        sent(0, off.pitch, off.offTick);
      } else if (on) {
        app.nextOn++;
        if (on.start < app.anchorStep || on.onTick !== undefined) continue;  // began before Play, or already sent
        on.onTick = Math.round(tickAt(on.start));
        seq.sendEventAt({ type: "noteon", channel: 0, key: on.pitch, vel: VELOCITY }, on.onTick, true);
        sent(1, on.pitch, on.onTick);
      } else {
        break;
      }
    }
    app.scheduledUntil = Math.max(app.scheduledUntil, until);
    for (const step of app.columns.keys()) if (step < app.playStep - 512) app.columns.delete(step);
    keepAhead().catch(fail);
  }

  function sent(on, key, tick) {  // the last events sent to the sequencer, for tests: [on, key, tick]
    app.sent.push([on, key, tick]);
    if (app.sent.length > 8192) app.sent.splice(0, 4096);
  }

  async function play() {
    await startAudio();
    if (app.audio.state !== "running") await app.audio.resume();
    app.anchorTick = tickNow() + START_DELAY_MS;
    app.anchorStep = app.scheduledUntil = app.playStep;
    app.previous = null;
    app.nextOn = firstIndex(app.notes.all, (n) => n.start >= app.playStep);
    for (let i = app.nextOn; i < app.notes.all.length; i++) delete app.notes.all[i].onTick;
    for (let i = app.nextOff; i < app.notes.ended.length; i++) delete app.notes.ended[i].offTick;
    app.nextOff = firstIndex(app.notes.ended, (n) => n.end >= app.playStep);
    app.playing = true;
    app.timer = setInterval(schedule, 40);
    $("play").textContent = "Stop";
    $("download").disabled = false;
    status(`Playing seed ${app.seed}.`);
  }

  // A change of tempo: the events already sent keep their times (at most HORIZON_MS ahead), and
  // the new tempo counts from the step where they end, so the music never jumps back or skips.
  function retime(tempo) {
    const step = Math.max(app.anchorStep, app.scheduledUntil);
    if (step > app.anchorStep) {
      app.previous = { step: app.anchorStep, tick: app.anchorTick, ms: stepMs() };
      app.anchorTick = tickAt(step);
      app.anchorStep = step;
    }
    app.tempo = tempo;
  }

  function firstIndex(list, test) {
    const i = list.findIndex(test);
    return i < 0 ? list.length : i;
  }

  function stop() {
    app.playing = false;
    clearInterval(app.timer);
    if (app.sequencer) app.sequencer.removeAllEvents();
    if (app.synth) app.synth.midiAllNotesOff(0);
    app.playStep = Math.floor(app.playStep);
    $("play").textContent = "Play";
    $("download").disabled = app.playStep === 0;
    status(`Stopped at bar ${Math.floor(app.playStep / app.spec.steps_per_bar) + 1}.`);
  }

  function draw() {
    const canvas = $("roll"), g = canvas.getContext("2d");
    const P = app.spec.grid.n_pitches, rowPx = canvas.height / P;
    const first = Math.floor(app.playStep) - Math.floor(canvas.width / STEP_PX / 4);
    const shift = (app.playStep % 1) * STEP_PX;
    g.fillStyle = "#14161c";
    g.fillRect(0, 0, canvas.width, canvas.height);
    const perBar = app.spec.steps_per_bar, visible = Math.ceil(canvas.width / STEP_PX) + 2;
    const x = (step) => Math.round((step - first) * STEP_PX - shift);
    g.fillStyle = "#2a2e38";
    for (let step = Math.max(0, Math.ceil(first / perBar) * perBar); step < first + visible; step += perBar) {
      g.fillRect(x(step), 0, 1, canvas.height);
    }
    for (let p = 0; p < P; p++) {  // each note one bar of colour, a gap before a struck-again note
      const y = Math.round(canvas.height - (p + 1) * rowPx) + 1, h = Math.max(1, Math.round(rowPx) - 1);
      let start = null;
      const flush = (end) => {
        if (start === null) return;
        g.fillStyle = start < app.playStep ? "#f2b35e" : "#b98546";
        g.fillRect(x(start) + 1, y, Math.max(1, x(end) - x(start) - 1), h);
        start = null;
      };
      for (let step = first; step < first + visible; step++) {
        const column = app.columns.get(step), cell = column ? column[p] : SILENT;
        if (cell === SILENT || cell === ONSET) flush(step);
        if (cell !== SILENT && start === null) start = step;
      }
      flush(first + visible);
    }
    g.fillStyle = "#ffffff";
    g.fillRect((app.playStep - first) * STEP_PX - shift, 0, 2, canvas.height);
    for (const step of app.columns.keys()) if (step < first - 64) app.columns.delete(step);
    requestAnimationFrame(draw);
  }

  function fail(error) {
    console.error(error);
    status(`Error: ${error.message || error}`);
  }

  async function main() {
    ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href;  // the page's own copies, never a CDN
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain static host lacks
    const [spec, instruments] = await Promise.all([
      fetch("apollo.json").then((r) => r.json()), fetch("instruments.json").then((r) => r.json())]);
    app.spec = spec;
    app.tempo = spec.tempo;
    app.session = await ort.InferenceSession.create("apollo.onnx", { executionProviders: ["wasm"] });
    const select = $("instrument");
    instruments.forEach((name, program) => select.add(new Option(`${program + 1}. ${name}`, String(program))));
    select.value = String(app.program);
    select.onchange = () => { app.program = Number(select.value); if (app.synth) app.synth.midiProgramChange(0, app.program); };
    const tempo = $("tempo");
    tempo.value = String(Math.round(app.tempo));
    $("tempo-value").textContent = tempo.value;
    tempo.oninput = () => {
      if (app.playing) retime(Number(tempo.value));
      app.tempo = Number(tempo.value);
      $("tempo-value").textContent = tempo.value;
    };
    $("play").onclick = () => (app.playing ? stop() : play().catch(fail));
    $("seed").onclick = () => (async () => {
      const playing = app.playing;
      if (playing) stop();
      await app.generating;
      newStream((Math.random() * 2 ** 31) >>> 0);
      await keepAhead();
      if (playing) await play();
      else status(`Seed ${app.seed}: press Play.`);
    })().catch(fail);
    $("download").onclick = () => {
      const bytes = midiFile(app.notes.all, Math.floor(app.playStep), spec.grid.steps_per_beat, app.tempo, app.program);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([bytes], { type: "audio/midi" }));
      link.download = `apollo-seed-${app.seed}.mid`;
      link.click();
      URL.revokeObjectURL(link.href);
    };
    newStream(Number(new URLSearchParams(location.search).get("seed") ?? 0));
    await keepAhead();
    for (const id of ["play", "instrument", "seed"]) $(id).disabled = false;
    const ms = app.windowTimes.reduce((a, b) => a + b, 0) / app.windowTimes.length;
    status(`Ready: ${app.windowTimes.length} windows generated, ${ms.toFixed(0)} ms each. Press Play.`);
    app.ready = true;
    requestAnimationFrame(draw);
  }

  // -- hooks for tests and measurements ---------------------------------------------------------

  // One window's notes, decoded alone (as PianoRoll.decode(probabilities[0])): cells as a string
  // of digits 0/1/2, pitch-major [n_pitches][n_steps]; with the model's decoding unless given one.
  window.apolloDecodeWindow = async (noise, decoding) => {
    const stream = new Stream(app.session, app.spec, null);
    const probs = await stream.probabilities(Float32Array.from(noise));
    const n = app.spec.chaining.window, P = app.spec.grid.n_pitches;
    const cells = decodePlanes(probs.subarray(0, P * n), app.spec.encoding === "onset" ? probs.subarray(P * n, 2 * P * n) : null,
                               P, n, decoding ?? app.spec.decoding);
    return cells.join("");
  };
  // The chained steps of a given noise tape (n columns [C, H], flattened), as the page plays them:
  // {steps, cells} with cells pitch-major [n_pitches][steps] as digits.
  window.apolloChain = async (tape) => {
    const C = app.spec.input.shape[1], H = app.spec.input.shape[2];
    const given = new GivenTape(Float32Array.from(tape), C * H);
    const stream = new Stream(app.session, app.spec, given);
    const columns = [];
    const n = 1 + Math.floor((given.length - stream.W) / app.spec.chaining.hop_columns);
    for (let k = 0; k < n; k++) columns.push(...await stream.next());
    const P = app.spec.grid.n_pitches;
    const out = new Uint8Array(P * columns.length);
    columns.forEach((column, t) => column.forEach((cell, p) => { out[p * columns.length + t] = cell; }));
    return { steps: columns.length, cells: out.join("") };
  };
  // Milliseconds per window for n windows of a fresh seed.
  window.apolloBench = async (n) => {
    const stream = new Stream(app.session, app.spec, new NoiseTape(12345, app.spec.input.shape[1] * app.spec.input.shape[2]));
    await stream.next();  // warm-up
    const began = performance.now();
    for (let k = 0; k < n; k++) await stream.next();
    return (performance.now() - began) / n;
  };
  function level() {  // RMS of the last samples played
    if (!app.analyser) return 0;
    const samples = new Float32Array(app.analyser.fftSize);
    app.analyser.getFloatTimeDomainData(samples);
    return Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
  }
  window.apolloState = () => ({
    level: level(),
    ready: Boolean(app.ready), playing: app.playing, audio: app.audio ? app.audio.state : null,
    seed: app.seed, generatedSteps: app.notes ? app.notes.steps : 0, playStep: app.playStep,
    notes: app.notes ? app.notes.all.length : 0, scheduled: app.nextOn, status: $("status").textContent,
    // struck notes whose end has been scheduled and that got no note-off: notes left sounding
    hanging: app.notes ? app.notes.ended.filter((n) => n.end < app.scheduledUntil && n.onTick !== undefined
      && n.offTick === undefined).length : 0,
  });
  window.apolloSent = () => app.sent;
  window.apolloMidi = () => Array.from(midiFile(app.notes.all, Math.floor(app.playStep), app.spec.grid.steps_per_beat, app.tempo, app.program));

  main().catch(fail);
})();
