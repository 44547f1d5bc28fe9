// Are two photos of the same person? The faceverify end-to-end graph on onnxruntime-node: one
// ONNX file takes a photo's RGB pixels and returns its face's embedding; the score is the cosine of
// the two embeddings, the same person when it reaches the model's threshold.
//
//   node verify.mjs MODEL.onnx PHOTO_A PHOTO_B [--largest]      (JPEG or PNG photos; MODEL.onnx from
//   `faceverify export --end-to-end MODEL.onnx`; --largest: the largest face, not the most central)
//
// Prints one JSON line: {"score", "same_person", "threshold", "faces": [found in A, found in B]}.
// A photo that cannot be read, is over 40 megapixels or has no face: one line on stderr, exit code 2.
// photo.mjs reads the photos as the Python library does (transparent pixels on white, a JPEG's EXIF
// orientation applied); jpeg-js decodes JPEG a little otherwise than libjpeg.
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import { InputError, readPhoto } from "./photo.mjs";

const LARGEST = 0n, CENTRAL = 1n; // face_policy: the largest face, or the one nearest the centre

async function embed(session, path, { rgb, width, height }, policy) {
  const image = new ort.Tensor("uint8", rgb, [height, width, 3]);
  const out = await session.run({ image, face_policy: new ort.Tensor("int64", [policy], [1]) });
  const faces = Number(out.faces_found.data[0]);
  if (faces === 0) throw new InputError(`${path}: no face found`);
  return { embedding: out.embedding.data, faces, threshold: out.threshold.data[0] };
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { largest: { type: "boolean" } },
  });
  if (positionals.length !== 3) throw new InputError("usage: node verify.mjs MODEL.onnx PHOTO_A PHOTO_B [--largest]");
  const [modelPath, pathA, pathB] = positionals;
  const [imageA, imageB] = [readPhoto(pathA), readPhoto(pathB)]; // before the model: a bad photo fails fast
  const session = await ort.InferenceSession.create(modelPath);
  if (!session.outputNames.includes("threshold")) {
    throw new InputError(`${modelPath}: no threshold output (export it again: faceverify export --end-to-end)`);
  }
  const policy = values.largest ? LARGEST : CENTRAL;
  const a = await embed(session, pathA, imageA, policy);
  const b = await embed(session, pathB, imageB, policy);
  // the embeddings are L2-normalised: their dot product is the cosine
  const score = a.embedding.reduce((sum, x, i) => sum + x * b.embedding[i], 0);
  const threshold = a.threshold; // the model's calibrated threshold (best accuracy on LFW dev pairs)
  console.log(JSON.stringify({ score, same_person: score >= threshold, threshold, faces: [a.faces, b.faces] }));
}

main().catch((error) => {
  console.error(`verify.mjs: ${error.message}`);
  process.exit(error instanceof InputError || error.code?.startsWith("ERR_PARSE_ARGS") ? 2 : 1);
});
