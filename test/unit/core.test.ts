import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../src/core/duration.js';
import { CairnError, isCairnError, reviveError, serializeError } from '../../src/core/errors.js';
import { canonicalHash, canonicalJson } from '../../src/core/hash.js';
import { assertRunId, isValidRunId, resolveInside } from '../../src/core/ids.js';
import { DEFAULT_LIMITS, openPayload, sealBody, sealPayload, unsealLine } from '../../src/core/record.js';
import { decodeValue, encodeValue } from '../../src/core/serialize.js';

describe('run ids', () => {
  it('accepts the documented alphabet and refuses everything else', () => {
    for (const ok of ['a', 'run-1', 'speech_pipeline.v2', 'A'.repeat(128), '_x', '-x']) expect(isValidRunId(ok), ok).toBe(true);
    for (const bad of ['', '.x', '..', '../x', 'a/b', 'a\\b', '/etc/passwd', '%2e%2e', 'a\0b', 'a b', 'é', 'x'.repeat(129), 42, null]) {
      expect(isValidRunId(bad), String(bad)).toBe(false);
      expect(() => assertRunId(bad)).toThrow(expect.objectContaining({ code: 'INVALID_RUN_ID' }));
    }
  });

  it('never resolves a path outside the root', () => {
    expect(resolveInside('/data/cp', 'run-1', 'items')).toBe('/data/cp/run-1/items');
    for (const parts of [['..'], ['../x'], ['/etc'], ['a', '..', '..', 'b'], ['']]) {
      expect(() => resolveInside('/data/cp', ...parts)).toThrow(expect.objectContaining({ code: 'INVALID_RUN_ID' }));
    }
  });
});

describe('canonical hashing', () => {
  it('ignores key order and undefined members, and tells types apart', () => {
    expect(canonicalJson({ b: 1, a: [1, { d: 2, c: 3 }] })).toBe('{"a":[1,{"c":3,"d":2}],"b":1}');
    expect(canonicalHash({ a: 1, b: 2 })).toBe(canonicalHash({ b: 2, a: 1 }));
    expect(canonicalHash({ a: 1, u: undefined })).toBe(canonicalHash({ a: 1 }));
    expect(canonicalHash({ a: 1 })).not.toBe(canonicalHash({ a: '1' }));
    expect(canonicalHash(new Date(0))).not.toBe(canonicalHash('1970-01-01T00:00:00.000Z'));
    expect(canonicalHash(1n)).not.toBe(canonicalHash(1));
    expect(canonicalHash(-0)).toBe(canonicalHash(0));
    expect(canonicalHash(new Map([['a', 1]]))).not.toBe(canonicalHash({ a: 1 }));
    expect(canonicalHash(new Uint8Array([1, 2]))).toBe(canonicalHash(new Uint8Array([1, 2])));
    expect(canonicalHash({ a: 1 })).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses what it cannot hash', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const bad of [cyclic, () => 1, Symbol('s'), new (class X {})()]) {
      expect(() => canonicalHash(bad)).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
    }
  });
});

describe('serialization', () => {
  it('writes plain JSON as JSON and rich values with devalue', () => {
    expect(encodeValue({ a: [1, 'x', null, true] })).toEqual({ enc: 'json', text: '{"a":[1,"x",null,true]}' });
    expect(encodeValue({ d: new Date(0) }).enc).toBe('devalue');
    expect(encodeValue({ u: undefined }).enc).toBe('devalue');
    expect(encodeValue([NaN]).enc).toBe('devalue');
    const shared = { s: 1 };
    expect(encodeValue([shared, shared]).enc).toBe('devalue');
  });

  it('round-trips lone surrogates and tag look-alikes as plain data', () => {
    for (const value of ['\ud800', 'a\udc00b', { $type: 'Date', value: 1 }, ['Date', '2020'], ['Map', 1, 2], { __type: 'Set' }]) {
      expect(decodeValue(encodeValue(value))).toEqual(value);
      expect(decodeValue(encodeValue([value, new Date(1)]))).toEqual([value, new Date(1)]);
    }
  });

  it('drops __proto__ keys instead of letting them reach a prototype', () => {
    const hostile = JSON.parse('{"__proto__":{"polluted":true},"x":[{"__proto__":{"polluted":true}}]}') as unknown;
    const back = decodeValue(encodeValue(hostile)) as Record<string, unknown>;
    expect(back).toEqual({ x: [{}] });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const textWithProto = { enc: 'json' as const, text: '{"__proto__":{"polluted":true},"ok":1}' };
    const decoded = decodeValue(textWithProto) as Record<string, unknown>;
    expect(Object.keys(decoded)).toEqual(['ok']);
    expect(Object.getPrototypeOf(decoded)).toBe(Object.prototype);
  });

  it('names what cannot be stored', () => {
    expect(() => encodeValue({ deep: { fn: () => 1 } })).toThrow(expect.objectContaining({ code: 'UNSERIALIZABLE' }));
    expect(() => encodeValue({ s: Symbol('x') })).toThrow(expect.objectContaining({ code: 'UNSERIALIZABLE' }));
  });
});

describe('sealed records', () => {
  it('verifies framing and checksum, and never throws on garbage', () => {
    const line = sealBody('{"fv":1,"t":"x"}');
    expect(unsealLine(line)).toMatchObject({ ok: true, body: { fv: 1, t: 'x' } });
    expect(unsealLine(line.replace('"x"', '"y"'))).toEqual({ ok: false, reason: 'checksum mismatch' });
    for (const garbage of ['', '{', 'null', line.slice(0, -1), line.slice(0, 30), `${line}x`, '{"crc":"zzzzzzzz","rec":{}}']) {
      expect(unsealLine(garbage).ok).toBe(false);
    }
  });

  it('enforces the payload limit and compresses above the threshold', () => {
    expect(() => sealPayload('x'.repeat(100), { maxPayloadBytes: 50, compressAboveBytes: false })).toThrow(
      expect.objectContaining({ code: 'PAYLOAD_TOO_LARGE' }),
    );
    const big = { text: 'abc'.repeat(10_000) };
    const sealed = sealPayload(big, { ...DEFAULT_LIMITS, compressAboveBytes: 1000 });
    expect(sealed.fragment).toContain('"zip":"deflate"');
    const line = sealBody(`{"fv":1,${sealed.fragment}}`);
    const opened = unsealLine(line);
    if (!opened.ok) throw new Error(opened.reason);
    expect(openPayload(opened.body, opened.bodyText)).toEqual(big);
  });
});

describe('errors', () => {
  it('keep code, context and cause through a serialize/revive round trip', () => {
    const error = new CairnError('RUN_LOCKED', 'held', { runId: 'r1', pid: 7 }, { cause: new Error('inner') });
    const revived = reviveError(JSON.parse(JSON.stringify(serializeError(error))) as ReturnType<typeof serializeError>);
    expect(isCairnError(revived, 'RUN_LOCKED')).toBe(true);
    expect(revived).toMatchObject({ code: 'RUN_LOCKED', message: 'held', context: { runId: 'r1', pid: 7 } });
    expect((revived.cause as Error).message).toBe('inner');
    expect(isCairnError(new Error('x'))).toBe(false);
    expect(serializeError('just a string')).toEqual({ name: 'NonError', message: 'just a string' });
  });
});

describe('durations', () => {
  it('parses the units operators type', () => {
    expect(parseDuration('7d')).toBe(7 * 86_400_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration(1000)).toBe(1000);
    for (const bad of ['7', 'd', '-1d', '7 days', '', -5, NaN])
      expect(() => parseDuration(bad)).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
  });
});
