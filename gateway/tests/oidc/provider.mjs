// A real OpenID Provider for the console's single sign-on tests: the npm package
// `oidc-provider` (installed by `.ci/oidc-provider`, which names its directory in
// PAYBOND_OIDC_PROVIDER), with one confidential client and a few accounts, its
// own login and consent pages, PKCE required and RP-initiated logout on.
//
//   node provider.mjs '<json config>'
//
// config: { issuer, port, client_id, client_secret, redirect_uri, post_logout_redirect_uri,
//           accounts: { <sub>: { email, email_verified, preferred_username } } }
// Prints `listening <issuer>` once it serves.
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.PAYBOND_OIDC_PROVIDER;
if (!dir) {
  console.error('PAYBOND_OIDC_PROVIDER is not set: run `eval "$(bash .ci/oidc-provider)"`');
  process.exit(2);
}
const { default: Provider } = await import(
  pathToFileURL(join(dir, 'node_modules', 'oidc-provider', 'lib', 'index.js')).href
);

const config = JSON.parse(process.argv[2]);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const key = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: [config.redirect_uri],
    post_logout_redirect_uris: [config.post_logout_redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [key] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['preferred_username', 'name'] },
  // Plain HTTP on loopback: SameSite=None cookies would need Secure.
  cookies: { keys: ['paybond-test-cookie-key'], long: { sameSite: 'lax' }, short: { sameSite: 'lax' } },
  async findAccount(_ctx, id) {
    // The login typed at the provider's page is the account's `sub`.
    const account = config.accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { ...account, sub: id }; } };
  },
});
provider.proxy = false;
provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
