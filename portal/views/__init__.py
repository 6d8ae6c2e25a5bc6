"""The portal's views, one module per part of the portal: the account and organization, API keys, usage, billing."""
