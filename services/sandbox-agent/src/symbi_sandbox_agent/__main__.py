from symbi_sandbox_agent.main import main

main()
