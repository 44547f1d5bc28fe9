// faceverify in the browser: two photos decoded here, the end-to-end graph run by onnxruntime-web's
// wasm backend (files in ./ort/, never a CDN), the cosine of the two embeddings against the model's
// threshold. Nothing leaves the page. The last result is on window.faceverifyResult.
import * as ort from "./ort/ort.wasm.min.mjs";

const $ = (selector) => document.querySelector(selector);
const slots = [$("#photo-1"), $("#photo-2")];
const inputs = slots.map((slot) => slot.querySelector("input"));

class PhotoError extends Error {}

function say(text, isError = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", isError);
}

// ---- the photo: its size from its header (a huge photo is refused before it is decoded), then
// its RGB pixels, composited on white as the library does with transparency

function headerSize(bytes) {
  const v = new DataView(bytes);
  const u8 = (i) => v.getUint8(i);
  const text = (i, n) => String.fromCharCode(...new Uint8Array(bytes, i, n));
  if (v.byteLength < 30) return null;
  if (u8(0) === 0xff && u8(1) === 0xd8) { // JPEG: the first start-of-frame segment
    for (let i = 2; i + 9 < v.byteLength;) {
      if (u8(i) !== 0xff) return null;
      const marker = u8(i + 1);
      if (marker === 0xff) { i += 1; continue; }
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { height: v.getUint16(i + 5), width: v.getUint16(i + 7) };
      }
      i += marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8) ? 2 : 2 + v.getUint16(i + 2);
    }
    return null;
  }
  if (u8(0) === 0x89 && text(1, 3) === "PNG") return { width: v.getUint32(16), height: v.getUint32(20) };
  if (text(0, 4) === "GIF8") return { width: v.getUint16(6, true), height: v.getUint16(8, true) };
  if (text(0, 2) === "BM") return { width: v.getInt32(18, true), height: Math.abs(v.getInt32(22, true)) };
  if (text(0, 4) === "RIFF" && text(8, 4) === "WEBP") {
    const chunk = text(12, 4);
    if (chunk === "VP8 ") return { width: v.getUint16(26, true) & 0x3fff, height: v.getUint16(28, true) & 0x3fff };
    if (chunk === "VP8L") {
      const bits = v.getUint32(21, true);
      return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
    }
    if (chunk === "VP8X") {
      const u24 = (i) => u8(i) | (u8(i + 1) << 8) | (u8(i + 2) << 16);
      return { width: u24(24) + 1, height: u24(27) + 1 };
    }
  }
  return null;
}

function checkPixels(size, label) {
  const pixels = size.width * size.height;
  if (pixels > config.max_pixels) {
    throw new PhotoError(`${label} is ${size.width} × ${size.height} = ${(pixels / 1e6).toFixed(1)} megapixels, ` +
      `over the ${config.max_pixels / 1e6}-megapixel limit: downscale it first.`);
  }
  if (pixels < 1) throw new PhotoError(`${label} is empty.`);
}

async function decode(file, label) {
  const size = headerSize(await file.slice(0, 1 << 18).arrayBuffer());
  if (size) checkPixels(size, label);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none" }); // EXIF rotation applied
  } catch {
    throw new PhotoError(`${label} is not an image this browser can decode.`);
  }
  const { width, height } = bitmap;
  try {
    checkPixels({ width, height }, label); // formats whose header was not read
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#fff";
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, width, height).data;
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
    }
    return { rgb, width, height };
  } finally {
    bitmap.close();
  }
}

// ---- the model: one run per photo, one run at a time (a newer verification waits its turn)

let queue = Promise.resolve();

function inTurn(task) {
  const turn = queue.then(task);
  queue = turn.catch(() => {});
  return turn;
}

async function analyse(photo) {
  const outputs = await session.run({
    image: new ort.Tensor("uint8", photo.rgb, [photo.height, photo.width, 3]),
    face_policy: new ort.Tensor("int64", BigInt64Array.of(BigInt(config.face_policy)), [1]),
  });
  return {
    found: Number(outputs.faces_found.data[0]),
    embedding: outputs.embedding.data,
    detectorScore: outputs.score.data[0],
    box: Array.from(outputs.box.data),
    aligned: { pixels: outputs.aligned.data, size: outputs.aligned.dims[0] },
  };
}

function showFace(slot, face) {
  const canvas = slot.querySelector("canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (face && face.found) {
    const { pixels, size } = face.aligned;
    const rgba = new ImageData(size, size);
    for (let i = 0, j = 0; j < pixels.length; i += 4, j += 3) {
      rgba.data[i] = pixels[j]; rgba.data[i + 1] = pixels[j + 1]; rgba.data[i + 2] = pixels[j + 2]; rgba.data[i + 3] = 255;
    }
    canvas.width = canvas.height = size;
    context.putImageData(rgba, 0, 0);
  }
  slot.querySelector(".faces").textContent = !face ? "" : face.found === 0 ? "No face found"
    : face.found === 1 ? "1 face found" : `${face.found} faces found: the one nearest the centre is compared`;
}

// ---- one verification: both photos decoded and run, then the decision

let latest = 0; // the newest verification: an older one still running does not overwrite it

async function verify(files) {
  const run = ++latest;
  const names = files.map((file) => file.name);
  const result = { names, score: null, same: null, threshold: config.threshold, ms: null, decodeMs: null, modelMs: null,
                   threads: ort.env.wasm.numThreads, faces: [], error: null };
  slots.forEach((slot) => showFace(slot, null));
  $("#result").hidden = true;
  say("Verifying…");
  try {
    const start = performance.now();
    const photos = [];
    for (const [i, file] of files.entries()) photos.push(await decode(file, `Photo ${i + 1} (${file.name})`));
    if (run !== latest) return result; // photos chosen again meanwhile: that verification will answer
    const decoded = performance.now();
    const faces = await inTurn(async () => {
      const found = [];
      for (const photo of photos) found.push(await analyse(photo));
      return found;
    });
    const end = performance.now();
    Object.assign(result, { ms: end - start, decodeMs: decoded - start, modelMs: end - decoded,
                            faces: faces.map(({ found, detectorScore, box }) => ({ found, score: detectorScore, box })) });
    if (run !== latest) return result;
    faces.forEach((face, i) => showFace(slots[i], face));
    const missing = faces.flatMap((face, i) => (face.found ? [] : [`photo ${i + 1}`]));
    if (missing.length) throw new PhotoError(`No face found in ${missing.join(" or ")}.`);
    let score = 0;
    for (let k = 0; k < config.embedding_dim; k++) score += faces[0].embedding[k] * faces[1].embedding[k];
    Object.assign(result, { score, same: score >= config.threshold });
    $("#decision").textContent = result.same ? "Same person" : "Different people";
    $("#decision").className = result.same ? "same" : "different";
    $("#score").textContent = `score ${score.toFixed(3)} (cosine of the two faces' embeddings; ` +
      `same person from ${config.threshold.toFixed(3)})`;
    $("#timing").textContent = `verified in ${result.ms.toFixed(0)} ms: decoding ${result.decodeMs.toFixed(0)} ms, ` +
      `model ${result.modelMs.toFixed(0)} ms (wasm, ${result.threads} thread${result.threads > 1 ? "s" : ""})`;
    $("#result").hidden = false;
    say("");
  } catch (error) {
    if (run !== latest) return result;
    result.error = error instanceof PhotoError ? error.message : `Verification failed: ${error.message ?? error}`;
    say(result.error, true);
  }
  if (run === latest) window.faceverifyResult = result;
  return result;
}

function chosen() {
  const files = inputs.map((input) => input.files[0]);
  const empty = files.findIndex((file) => !file);
  if (empty >= 0) {
    say(`Choose photo ${empty + 1}.`);
    return;
  }
  verify(files);
}

// ---- start: the model's description, then its session

let config, session;
try {
  const response = await fetch("model.json");
  if (!response.ok) throw new Error(`model.json: HTTP ${response.status} (serve the folder faceverify export --web wrote)`);
  config = await response.json();
  ort.env.wasm.wasmPaths = new URL("ort/", import.meta.url).href; // the copies beside the page, never a CDN
  ort.env.wasm.numThreads = self.crossOriginIsolated ? navigator.hardwareConcurrency : 1;
  session = await ort.InferenceSession.create(config.model, { executionProviders: ["wasm"] });
  inputs.forEach((input) => {
    input.disabled = false;
    input.addEventListener("change", chosen);
  });
  const licence = (text) => text.split(" (")[0]; // "MIT (where from)" → "MIT"
  const parts = [`faceverify ${config.faceverify}`, `model ${config.weights_sha256.slice(0, 12)}`,
    `faces: ${config.detector.name} (${Object.values(config.detector.licences).map(licence).join(", ")})`,
    `embeddings: ${config.members.map((m) => `${m.name} (${licence(m.licence)})`).join(", ")}`,
    `runtime: onnxruntime-web ${config.onnxruntime_web} (MIT)`];
  $("#about").textContent = parts.join(" · ");
  $("#licences").append("Licences: ");
  for (const path of config.licence_files) {
    const link = Object.assign(document.createElement("a"), { href: path, textContent: path.split("/").pop() });
    $("#licences").append(link, " ");
  }
  say("Choose two photos.");
  window.faceverifyVerify = () => verify(inputs.map((input) => input.files[0])); // the benchmark's hook
  window.faceverifyReady = true;
} catch (error) {
  const hint = location.protocol === "file:" ? " (open the page through a web server, e.g. python -m http.server)" : "";
  say(`The model could not be loaded: ${error.message ?? error}${hint}`, true);
  window.faceverifyReady = false;
}
