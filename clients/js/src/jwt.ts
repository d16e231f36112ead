/** The claims the client reads from a JWT, without verifying it (the relay does). */
export interface Claims {
  sub: string;
  exp?: number;
}

/** `sub` and `exp` of a JWT; "anonymous" for no token or one that is not a readable JWT. */
export function claims(token: string | null | undefined): Claims {
  if (!token) return { sub: 'anonymous' };
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
    return { sub: typeof json.sub === 'string' ? json.sub : 'anonymous', exp: json.exp };
  } catch {
    return { sub: 'anonymous' };
  }
}
