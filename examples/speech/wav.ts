/**
 * Just enough of the WAV format for the example, written by hand (no dependency): 16-bit PCM, any
 * rate and channel count, read from plain `WAVE_FORMAT_PCM` or `WAVE_FORMAT_EXTENSIBLE` files.
 */
import fs from 'node:fs';

export interface Pcm {
  readonly sampleRate: number;
  /** One Float32Array per channel, samples in -1..1. */
  readonly channels: readonly Float32Array[];
}

const PCM = 1;
const EXTENSIBLE = 0xfffe;

/** Encodes 16-bit PCM: a 44-byte RIFF header, then interleaved little-endian samples. */
export function encodeWav(pcm: Pcm): Buffer {
  const channels = pcm.channels.length;
  const frames = pcm.channels[0]?.length ?? 0;
  const dataBytes = frames * channels * 2;
  const out = Buffer.alloc(44 + dataBytes);
  out.write('RIFF', 0, 'ascii');
  out.writeUInt32LE(36 + dataBytes, 4);
  out.write('WAVE', 8, 'ascii');
  out.write('fmt ', 12, 'ascii');
  out.writeUInt32LE(16, 16); // fmt chunk size
  out.writeUInt16LE(PCM, 20);
  out.writeUInt16LE(channels, 22);
  out.writeUInt32LE(pcm.sampleRate, 24);
  out.writeUInt32LE(pcm.sampleRate * channels * 2, 28); // byte rate
  out.writeUInt16LE(channels * 2, 32); // block align
  out.writeUInt16LE(16, 34); // bits per sample
  out.write('data', 36, 'ascii');
  out.writeUInt32LE(dataBytes, 40);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = 44;
  for (let i = 0; i < frames; i++) {
    for (const channel of pcm.channels) {
      const s = Math.max(-1, Math.min(1, channel[i]!));
      view.setInt16(at, Math.round(s < 0 ? s * 0x8000 : s * 0x7fff), true);
      at += 2;
    }
  }
  return out;
}

/** Decodes a 16-bit PCM WAV; anything else is refused with a message that says what the file is. */
export function decodeWav(bytes: Buffer, name = 'the file'): Pcm {
  if (bytes.length < 12 || bytes.toString('ascii', 0, 4) !== 'RIFF' || bytes.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${name} is not a WAV file (no RIFF/WAVE header).`);
  }
  let format: { tag: number; channels: number; rate: number; bits: number } | undefined;
  let at = 12;
  while (at + 8 <= bytes.length) {
    const id = bytes.toString('ascii', at, at + 4);
    const size = bytes.readUInt32LE(at + 4);
    const body = at + 8;
    if (id === 'fmt ') {
      let tag = bytes.readUInt16LE(body);
      if (tag === EXTENSIBLE && size >= 26) tag = bytes.readUInt16LE(body + 24); // the sub-format GUID starts with the tag
      format = { tag, channels: bytes.readUInt16LE(body + 2), rate: bytes.readUInt32LE(body + 4), bits: bytes.readUInt16LE(body + 14) };
    } else if (id === 'data') {
      if (!format) throw new Error(`${name}: the data chunk comes before the fmt chunk.`);
      if (format.tag !== PCM || format.bits !== 16 || format.channels < 1) {
        throw new Error(
          `${name}: only 16-bit PCM WAV is supported (format ${format.tag}, ${format.bits} bits, ${format.channels} channels).`,
        );
      }
      const end = Math.min(bytes.length, body + size); // a truncated file keeps the frames it still has
      const frames = Math.floor((end - body) / (2 * format.channels));
      const channels = Array.from({ length: format.channels }, () => new Float32Array(frames));
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      let p = body;
      for (let i = 0; i < frames; i++) {
        for (const channel of channels) {
          channel[i] = view.getInt16(p, true) / 0x8000;
          p += 2;
        }
      }
      return { sampleRate: format.rate, channels };
    }
    at = body + size + (size % 2); // chunks are padded to an even size
  }
  throw new Error(`${name}: no data chunk found.`);
}

export const readWav = (file: string): Pcm => decodeWav(fs.readFileSync(file), file);

export function writeWav(file: string, pcm: Pcm): void {
  fs.writeFileSync(file, encodeWav(pcm));
}
