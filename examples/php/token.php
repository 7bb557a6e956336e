<?php
// Minting and checking roostd tokens: HS256 JWTs (RFC 7519) with nothing but
// PHP's standard library. The key is the UTF-8 bytes of the secret string,
// exactly as roostd reads ROOSTD_SECRET / --secret-file (spec §2, §6).

declare(strict_types=1);

/** base64url without padding (RFC 7515 §2). */
function b64url_encode(string $bytes): string
{
    return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
}

/** The inverse; null when the text is not base64url. */
function b64url_decode(string $text): ?string
{
    if (!preg_match('/^[A-Za-z0-9_-]*$/', $text)) {
        return null;
    }
    $bytes = base64_decode(strtr($text, '-_', '+/') . str_repeat('=', (4 - strlen($text) % 4) % 4), true);
    return $bytes === false ? null : $bytes;
}

/**
 * Signs claims as a compact JWT with HMAC-SHA256. `$kid` picks a key of
 * roostd's key ring (config `[[keys]]`); without it the default key is used.
 */
function jwt_hs256(array $claims, string $secret, ?string $kid = null): string
{
    $header = ['alg' => 'HS256', 'typ' => 'JWT'];
    if ($kid !== null) {
        $header['kid'] = $kid;
    }
    $flags = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR;
    $signing_input = b64url_encode(json_encode($header, $flags)) . '.' . b64url_encode(json_encode($claims, $flags));
    $signature = hash_hmac('sha256', $signing_input, $secret, true);
    return $signing_input . '.' . b64url_encode($signature);
}

/**
 * Checks an HS256 JWT the way roostd does (signature in constant time,
 * alg, exp/nbf with a leeway); returns its claims, or null.
 */
function jwt_hs256_verify(string $jwt, string $secret, int $leeway = 30): ?array
{
    $parts = explode('.', $jwt);
    if (count($parts) !== 3) {
        return null;
    }
    [$h, $p, $s] = $parts;
    $expected = b64url_encode(hash_hmac('sha256', "$h.$p", $secret, true));
    if (!hash_equals($expected, $s)) {
        return null;
    }
    $header = json_decode((string) b64url_decode($h), true);
    $claims = json_decode((string) b64url_decode($p), true);
    if (!is_array($header) || !is_array($claims) || ($header['alg'] ?? null) !== 'HS256') {
        return null;
    }
    $now = time();
    if (!isset($claims['exp']) || !is_numeric($claims['exp']) || $claims['exp'] + $leeway < $now) {
        return null;
    }
    if (isset($claims['nbf']) && $claims['nbf'] - $leeway > $now) {
        return null;
    }
    return $claims;
}

/** A token for a browser or device: read and write the `room:*` channels. */
function client_token(string $sub, string $secret, int $ttl = 3600): string
{
    $now = time();
    return jwt_hs256([
        'sub' => $sub,
        'iat' => $now,
        'exp' => $now + $ttl,
        'read' => ['room:*'],
        'write' => ['room:*'],
    ], $secret);
}

/**
 * The application's own token for roostd's HTTP API: everything allowed.
 * `api: true` is what the HTTP API requires; client tokens never carry it,
 * so a browser cannot use the API to skip the publish hook.
 */
function app_token(string $sub, string $secret, int $ttl = 300): string
{
    $now = time();
    return jwt_hs256([
        'sub' => $sub,
        'iat' => $now,
        'exp' => $now + $ttl,
        'read' => ['*'],
        'write' => ['*'],
        'api' => true,
    ], $secret);
}
