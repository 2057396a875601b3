"""The local platform (`prism dev up`): moto as AWS, `chalice local` as API Gateway."""
